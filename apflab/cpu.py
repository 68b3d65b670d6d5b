"""One AArch64 vCPU on unicorn: registers, exception entry, EL switch, sysreg traps.

This is the only module that imports unicorn. Everything above it sees a
``Vcpu`` that speaks plain Python types and returns an ``Exit`` from ``run``.
The vCPU knows nothing of SDEI or APF: it reports why it stopped and lets the
host decide.

Unicorn quirks handled here, once (docs/DESIGN.md ("Unicorn quirks")):
- HVC is undefined unless SCR_EL3.HCE is set.
- There is no exception vectoring: SVC/HVC/BRK/undefined reach ``UC_HOOK_INTR``
  and the host builds ESR/ELR/SPSR/FAR and enters VBAR_EL1 + offset itself.
- Writing PSTATE does not switch EL by itself; a CP register write refreshes
  the CPU's cached flags, and the banked stack pointers must be swapped by hand.
- A Python exception in a hook would be swallowed: hooks store it, ``run``
  re-raises it.
- Sysreg hooks for registers the CPU model lacks must step PC themselves.
- There is no instruction counter in the API. ``emu_start(count=N)`` keeps one
  in the engine (``uc->emu_counter``); ``_InsnCounter`` finds where and reads it,
  after proving on a calibration program that the reading is exact.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from unicorn import (UC_ARCH_ARM64, UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_ERR_EXCEPTION, UC_HOOK_CODE, UC_HOOK_INSN,
                     UC_HOOK_INTR, UC_HOOK_TLB_FILL, UC_MEM_FETCH, UC_MEM_WRITE,
                     UC_MODE_ARM, UC_PROT_ALL, UC_TLB_VIRTUAL, Uc, UcError)
from unicorn import arm64_const as A

try:   # the binding's C library handle: plain 64-bit registers without its per-call dispatch
    from unicorn.unicorn_py3.unicorn import uclib as _uclib
except ImportError:  # pragma: no cover - other binding layouts fall back to Uc.reg_read
    _uclib = None
try:   # the MRS/MSR hook's C signature and the CP register struct, used without the
       # binding's per-call wrappers
    from unicorn.unicorn_py3.arch.arm64 import HOOK_INSN_SYS_CFUNC as _SYS_CFUNC
    from unicorn.unicorn_py3.arch.arm64 import UcRegCP64 as _UcRegCP64
except ImportError:  # pragma: no cover
    _SYS_CFUNC = _UcRegCP64 = None
# The hook's register description (the binding's UcRegCP64): crn, crm, op0, op1, op2, val.
_CP_REG = struct.Struct("<5I4xQ")

from .asm import disassemble_one
from .errors import HookError, InvariantError

PAGE_SIZE = 4096
PAGE_MASK = ~(PAGE_SIZE - 1)

from .arch import (EC_BRK64, EC_DABT_CUR, EC_DABT_LOW, EC_HVC64, EC_IABT_CUR, EC_IABT_LOW,  # noqa: F401
                   EC_SVC64, EC_UNKNOWN, EC_WFX, ESR_IL, MODE_EL0T, MODE_EL1H, MODE_EL1T, PSTATE_DAIF,
                   PSTATE_EL1H_MASKED, PSTATE_I, PSTATE_M_MASK, VEC_CURRENT_SP0, VEC_CURRENT_SPX, VEC_FIQ,
                   VEC_IRQ, VEC_LOWER_A64, VEC_SERROR, VEC_SYNC)

EC_NAMES = {
    EC_UNKNOWN: "unknown reason (undefined instruction)", EC_WFX: "WFI/WFE",
    EC_SVC64: "SVC from AArch64", EC_HVC64: "HVC from AArch64", 0x17: "SMC from AArch64",
    EC_IABT_LOW: "instruction abort from a lower EL", EC_IABT_CUR: "instruction abort from the current EL",
    EC_DABT_LOW: "data abort from a lower EL", EC_DABT_CUR: "data abort from the current EL",
    EC_BRK64: "BRK from AArch64",
}

# unicorn's UC_HOOK_INTR numbers for AArch64 (QEMU's EXCP_* values).
_INTNO_UDEF, _INTNO_SWI, _INTNO_BKPT, _INTNO_HVC, _INTNO_SMC = 1, 2, 7, 11, 13

# Named registers a caller may read or write (lower-case names, as in the Arm ARM).
_GPRS = {f"x{i}": A.UC_ARM64_REG_X0 + i for i in range(29)}
_GPRS.update({"x29": A.UC_ARM64_REG_X29, "x30": A.UC_ARM64_REG_X30, "fp": A.UC_ARM64_REG_X29,
              "lr": A.UC_ARM64_REG_X30, "sp": A.UC_ARM64_REG_SP, "pc": A.UC_ARM64_REG_PC,
              "pstate": A.UC_ARM64_REG_PSTATE, "nzcv": A.UC_ARM64_REG_NZCV})
_SYSREGS = {
    "elr_el1": A.UC_ARM64_REG_ELR_EL1, "spsr_el1": (3, 0, 4, 0, 0),
    "sctlr_el1": (3, 0, 1, 0, 0), "cntkctl_el1": (3, 0, 14, 1, 0),
    "esr_el1": A.UC_ARM64_REG_ESR_EL1, "far_el1": A.UC_ARM64_REG_FAR_EL1,
    "vbar_el1": A.UC_ARM64_REG_VBAR_EL1, "sp_el0": A.UC_ARM64_REG_SP_EL0,
    "sp_el1": A.UC_ARM64_REG_SP_EL1, "tpidr_el0": A.UC_ARM64_REG_TPIDR_EL0,
    "tpidr_el1": A.UC_ARM64_REG_TPIDR_EL1, "tpidrro_el0": A.UC_ARM64_REG_TPIDRRO_EL0,
    "mair_el1": A.UC_ARM64_REG_MAIR_EL1, "ttbr0_el1": A.UC_ARM64_REG_TTBR0_EL1,
    "ttbr1_el1": A.UC_ARM64_REG_TTBR1_EL1,
}
REG_NAMES = tuple(_GPRS) + tuple(_SYSREGS)

_TPIDR_EL0 = (3, 3, 13, 0, 2)
# Engine CPU models: unicorn's default (Cortex-A72, Armv8.0: no LSE atomics) and QEMU's
# "max" (later Armv8.x features, LSE among them).
CPU_MODELS = {"cortex-a72": A.UC_CPU_ARM64_A72, "max": A.UC_CPU_ARM64_MAX}
_CLREX = 0xD503305F            # clrex
# The stub's page: the top page of the 48-bit address space, far from guest RAM. Its
# translation stays cached after the stub ran (a TLB flush per vCPU switch costs a quarter
# of the 4-vCPU speed), so a guest access to exactly this page would read the stub instead
# of faulting: on hardware, with the MMU off, it is an address-size fault.
_CLREX_PAGE = 0xFFFF_FFFF_F000

# The instructions that can clear PSTATE.I at EL1 (Arm ARM C6.2 ERET, MSR (immediate),
# MSR (register)): an IRQ held off by PSTATE.I is taken right after one of them.
ERET = 0xD69F03E0
_DAIFCLR_MASK, _DAIFCLR = 0xFFFFF0FF, 0xD50340FF      # MSR DAIFClr, #imm: op1=3, op2=7, CRm=imm
_MSR_DAIF_MASK, _MSR_DAIF = 0xFFFFFFE0, 0xD51B4220    # MSR DAIF, Xt: S3_3_C4_C2_1


def unmask_kind(word: int) -> str | None:
    """"eret", "daifclr" (only if #imm has the I bit) or "msr_daif" for a word that may unmask IRQs."""
    if word == ERET:
        return "eret"
    if word & _DAIFCLR_MASK == _DAIFCLR:
        return "daifclr" if word >> 9 & 1 else None    # CRm = D:A:I:F, I is bit 1
    if word & _MSR_DAIF_MASK == _MSR_DAIF:
        return "msr_daif"
    return None

# System registers by (op0, op1, CRn, CRm, op2), for the trap table.
SysregKey = tuple[int, int, int, int, int]


class ExitKind(Enum):
    """Why ``Vcpu.run`` returned: the host's run loop switches on this."""
    SLICE_END = "slice_end"        # the instruction budget of the slice ran out
    HVC = "hvc"                    # hypercall; PC is past the hvc
    SMC = "smc"
    SVC = "svc"                    # PC is past the svc
    BRK = "brk"                    # PC is on the brk
    UNDEF = "undef"                # PC is on the undefined instruction
    WFI = "wfi"                    # PC is past the wfi
    STAGE2_ABORT = "stage2_abort"  # PC is on the faulting instruction, nothing of it retired
    SYSREG = "sysreg"              # a trapped MRS/MSR was emulated; PC is past it


@dataclass
class Exit:
    kind: ExitKind
    retired: int                   # instructions retired in this run
    pc: int
    imm: int | None = None         # hvc/svc/brk immediate
    ipa: int | None = None         # stage-2 abort address
    access: str | None = None      # "read" / "write" / "fetch"
    segments: list[tuple[int, int]] = field(default_factory=list)  # (retired_at, new_el) EL changes inside the run
    sysreg: tuple | None = None    # SYSREG: the (op0, op1, CRn, CRm, op2) emulated


class _InsnCounter:
    """Reads unicorn's internal count of instructions executed by ``emu_start``.

    With ``count=N`` the engine counts in ``uc->emu_counter`` (incremented
    before each instruction) next to ``uc->emu_count`` (= N). The struct is
    private, so the offset is found by scanning for two known runs and then
    proved on a calibration program; ``Vcpu`` refuses to start otherwise.
    """

    _offset: int | None = None
    SCAN_BYTES = 4096

    @classmethod
    def offset(cls) -> int:
        if cls._offset is None:
            cls._offset = cls._calibrate()
        return cls._offset

    @classmethod
    def _calibrate(cls) -> int:
        uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        base = 0x1000_0000
        uc.mem_map(base, 0x1000)
        nop, brk = 0xD503201F, 0xD4200000
        uc.mem_write(base, struct.pack("<40I", *([nop] * 39 + [brk])))
        uc.hook_add(UC_HOOK_INTR, lambda u, n, d: u.emu_stop())
        handle = uc._uch.value  # private, read-only use
        candidates = None
        for count in (7, 13):
            uc.emu_start(base, 1, count=count)
            buf = ctypes.string_at(handle, cls.SCAN_BYTES)
            found = {off - 8 for off in range(8, cls.SCAN_BYTES - 8, 8)
                     if struct.unpack_from("<QQ", buf, off - 8) == (count + 1, count)}
            candidates = found if candidates is None else candidates & found
        if not candidates or len(candidates) != 1:
            raise InvariantError("cannot locate unicorn's instruction counter; "
                                 "this unicorn build is not supported")
        off = candidates.pop()
        # Proof: 39 nops then brk stops early with the brk counted.
        uc.emu_start(base, 1, count=1000)
        got = struct.unpack("<Q", ctypes.string_at(handle + off, 8))[0]
        if got != 40:
            raise InvariantError(f"unicorn instruction counter calibration failed ({got} != 40)")
        return off


class Vcpu:
    """A single AArch64 vCPU with guest RAM at ``ram_base``.

    ``ram`` is an anonymous mmap the engine executes from directly, so the
    stage-2 owner can move page bytes in and out and release host memory.
    """

    def __init__(self, ram_base: int, ram_size: int, ram: mmap.mmap | None = None,
                 cpu_model: str = "cortex-a72"):
        if ram_base % PAGE_SIZE or ram_size % PAGE_SIZE or ram_size <= 0:
            raise InvariantError("guest RAM must be whole pages")
        self.ram_base = ram_base
        self.ram_size = ram_size
        # Several vCPUs share one host mapping of guest RAM: pass the first vCPU's ``ram``.
        if ram is not None and len(ram) != ram_size:
            raise InvariantError("a shared guest RAM mapping must be ram_size bytes")
        self.ram = ram if ram is not None else mmap.mmap(-1, ram_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._uc = uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
        if cpu_model not in CPU_MODELS:
            raise InvariantError(f"unknown CPU model {cpu_model!r}; choose one of {', '.join(CPU_MODELS)}")
        if cpu_model != "cortex-a72":          # unicorn's default model; set before anything else
            uc.ctl_set_cpu_model(CPU_MODELS[cpu_model])
        # Quirk: the engine's page is 1 KiB unless set before anything else;
        # TLB entries are in engine pages, stage-2 is in 4 KiB pages.
        uc.ctl_set_page_size(PAGE_SIZE)
        self._ram_ptr = ctypes.c_char.from_buffer(self.ram)
        uc.mem_map_ptr(ram_base, ram_size, UC_PROT_ALL, ctypes.addressof(self._ram_ptr))
        # Quirk: HVC is UNDEFINED unless SCR_EL3.HCE (bit 8) is set. SCR_EL3.RW
        # (bit 10) and HCR_EL2.RW (bit 31) say the lower ELs are AArch64;
        # without them an EL1->EL1 eret is judged illegal and sets PSTATE.IL.
        uc.cpr_write(3, 6, 1, 1, 0, uc.cpr_read(3, 6, 1, 1, 0) | 1 << 8 | 1 << 10)
        uc.cpr_write(3, 4, 1, 1, 0, uc.cpr_read(3, 4, 1, 1, 0) | 1 << 31)
        # Python owns translation: a natural stage-2 (guest MMU off, IPA == VA).
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        # Quirk: emu_start's `until` address is translated on every start (a
        # fetch fill of its page). An empty exit list replaces it: the vCPU stops
        # only for the reasons ``run`` reports.
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        self._counter_addr = uc._uch.value + _InsnCounter.offset()
        self._uch = uc._uch
        self._u64 = ctypes.c_uint64()
        self._u64_ref = ctypes.byref(self._u64)
        if _uclib is not None:
            self._rd, self._wr = self._rd_fast, self._wr_fast
        else:
            self._rd, self._wr = uc.reg_read, uc.reg_write
        if _uclib is not None and _UcRegCP64 is not None:
            self._cp = _UcRegCP64()
            self._cp_ref = ctypes.byref(self._cp)
            self._cpr_rd, self._cpr_wr = self._cpr_rd_fast, self._cpr_wr_fast
        else:  # pragma: no cover - other binding layouts
            self._cpr_rd = lambda key: uc.cpr_read(*key)
            self._cpr_wr = lambda key, value: uc.cpr_write(*key, value)

        # Callbacks set by the host.
        self.is_mapped: Callable[[int], bool] = lambda ipa: True
        self.on_tlb_fill: Callable[[int], None] | None = None
        self.sysreg_read: dict[SysregKey, Callable[[], int]] = {}
        self.sysreg_write: dict[SysregKey, Callable[[int], None]] = {}
        self.clock_at_retired: Callable[[int], None] = lambda retired: None
        # Fast path (set by the host): called inside the sysreg or interrupt hook with the
        # SYSREG or HVC exit the slow path would have returned; answers the next slice's
        # instruction count when the host's loop would just run on, or None to end the run
        # there (see ``_sys_inline``, ``_hvc_inline``).
        self.exit_continue: Callable[[Exit], int | None] | None = None

        self._hook_error: BaseException | None = None
        self._stop: Exit | None = None
        self._abort: tuple[int, str] | None = None
        self._el_changes: list[tuple[int, int]] = []
        self._watched: set[int] = set()   # addresses of erets and IRQ-unmasking instructions
        # Set by the host before each run: an IRQ is pending but PSTATE.I holds it off.
        # The run then stops right after the first instruction that clears PSTATE.I.
        self.irq_waiting = False
        self._unmask_at: int | None = None
        self._stepping = False
        self._sysreg = None
        self._done_before = 0
        self._base = 0              # engine count at the start of the current (virtual) slice
        self._host_error: BaseException | None = None
        self.inline_traps = 0       # traps the fast path handled without ending emu_start
        # Per trapped register: did the engine step PC past it itself (a register the CPU
        # model implements) or not (ICC_*)? Learnt from slow-path traps. Only registers never
        # seen stepped are emulated inside the hook: for the ones the model implements (the
        # timer's), where the engine stops after the hook depends on the translation block
        # (sometimes PC is past the instruction, sometimes not), which the slow path's count
        # of retired instructions follows and the hook cannot see.
        self._stepped: dict[SysregKey, bool] = {}

        self._clrex_mapped = False
        self._in_clrex = False
        uc.hook_add(UC_HOOK_TLB_FILL, self._tlb_fill)
        uc.hook_add(UC_HOOK_INTR, self._intr)
        if _SYS_CFUNC is not None and _uclib is not None:
            # Every MRS/MSR reaches this hook (most are not trapped): the binding's wrapper
            # and its register object cost more than the work, so the C callback is ours.
            self._sys_cbs = []
            for insn, is_write in ((A.UC_ARM64_INS_MRS, False), (A.UC_ARM64_INS_MSR, True)):
                cb = _SYS_CFUNC(lambda _h, reg, ptr, _ud, w=is_write: self._sys_raw(reg, ptr, w))
                self._sys_cbs.append(cb)
                uc._Uc__do_hook_add(UC_HOOK_INSN, cb, 1, 0, ctypes.c_int(insn))
        else:  # pragma: no cover - other binding layouts
            uc.hook_add(UC_HOOK_INSN, self._mrs, None, 1, 0, A.UC_ARM64_INS_MRS)
            uc.hook_add(UC_HOOK_INSN, self._msr, None, 1, 0, A.UC_ARM64_INS_MSR)

    # ------------------------------------------------------------------ registers
    def _rd_fast(self, rid: int) -> int:
        # Some registers (PSTATE) are 32-bit: clear the buffer so no stale half remains.
        self._u64.value = 0
        _uclib.uc_reg_read(self._uc._uch, rid, self._u64_ref)
        return self._u64.value

    def _wr_fast(self, rid: int, value: int) -> None:
        self._u64.value = value
        _uclib.uc_reg_write(self._uc._uch, rid, self._u64_ref)

    def _cpr_rd_fast(self, key: SysregKey) -> int:
        cp = self._cp
        cp.op0, cp.op1, cp.crn, cp.crm, cp.op2 = key
        cp.val = 0
        _uclib.uc_reg_read(self._uch, A.UC_ARM64_REG_CP_REG, self._cp_ref)
        return cp.val

    def _cpr_wr_fast(self, key: SysregKey, value: int) -> None:
        cp = self._cp
        cp.op0, cp.op1, cp.crn, cp.crm, cp.op2 = key
        cp.val = value
        _uclib.uc_reg_write(self._uch, A.UC_ARM64_REG_CP_REG, self._cp_ref)

    def _read_id(self, rid) -> int:
        # Registers unicorn has no constant for (SPSR_EL1, SCTLR_EL1) go by encoding.
        if isinstance(rid, tuple):
            return self._cpr_rd(rid)
        return self._rd(rid)

    def _write_id(self, rid, value: int) -> None:
        if isinstance(rid, tuple):
            self._cpr_wr(rid, value)
        else:
            self._wr(rid, value)

    def reg(self, name: str) -> int:
        name = name.lower()
        if name in ("sp_el0", "sp_el1") and self._live_sp_name() == name:
            return self._rd(A.UC_ARM64_REG_SP)
        rid = _GPRS.get(name) or _SYSREGS.get(name)
        if rid is None:
            raise KeyError(f"unknown register {name!r}; known: {', '.join(REG_NAMES)}")
        return self._read_id(rid)

    def set_reg(self, name: str, value: int) -> None:
        name = name.lower()
        value &= (1 << 64) - 1
        if name == "pstate":
            self.set_pstate(value)
            return
        if name in ("sp_el0", "sp_el1") and self._live_sp_name() == name:
            self._wr(A.UC_ARM64_REG_SP, value)
            return
        rid = _GPRS.get(name) or _SYSREGS.get(name)
        if rid is None:
            raise KeyError(f"unknown register {name!r}; known: {', '.join(REG_NAMES)}")
        self._write_id(rid, value)

    def x(self, i: int) -> int:
        return self._rd(A.UC_ARM64_REG_X0 + i if i < 29 else _GPRS[f"x{i}"])

    def set_x(self, i: int, value: int) -> None:
        self._wr(A.UC_ARM64_REG_X0 + i if i < 29 else _GPRS[f"x{i}"], value & (1 << 64) - 1)

    @property
    def pc(self) -> int:
        return self._rd(A.UC_ARM64_REG_PC)

    @pc.setter
    def pc(self, value: int) -> None:
        self._wr(A.UC_ARM64_REG_PC, value)

    @property
    def pstate(self) -> int:
        return self._rd(A.UC_ARM64_REG_PSTATE)

    @property
    def el(self) -> int:
        return (self.pstate >> 2) & 3

    def _live_sp_name(self) -> str:
        mode = self.pstate & PSTATE_M_MASK
        return "sp_el1" if mode == MODE_EL1H else "sp_el0"

    def set_pstate(self, value: int) -> None:
        """Write PSTATE, switching EL and banked SP the way an exception would.

        Quirk: unicorn keeps the live SP in one register and the banks apart;
        a PSTATE write swaps neither and leaves the cached EL flags stale.
        """
        old_bank = self._live_sp_name()
        sp = self._rd(A.UC_ARM64_REG_SP)
        self._wr(_SYSREGS[old_bank], sp)
        self._wr(A.UC_ARM64_REG_PSTATE, value)
        new_bank = self._live_sp_name()
        self._wr(A.UC_ARM64_REG_SP, self._rd(_SYSREGS[new_bank]))
        # Any CP register write rebuilds the cached hflags (EL, SP select).
        self._cpr_wr(_TPIDR_EL0, self._cpr_rd(_TPIDR_EL0))

    def regs(self) -> dict[str, int]:
        """A plain snapshot of every named register (for widgets and traces)."""
        out = {f"x{i}": self.x(i) for i in range(31)}
        out.update(sp=self.reg("sp"), pc=self.pc, pstate=self.pstate)
        for name in _SYSREGS:
            out[name] = self.reg(name)
        return out

    # ------------------------------------------------------------------ memory
    def read(self, addr: int, size: int) -> bytes:
        off = addr - self.ram_base
        if off < 0 or off + size > self.ram_size:
            raise IndexError(f"[{addr:#x}, +{size:#x}) is outside guest RAM")
        return self.ram[off:off + size]

    def write(self, addr: int, data: bytes) -> None:
        off = addr - self.ram_base
        if off < 0 or off + len(data) > self.ram_size:
            raise IndexError(f"[{addr:#x}, +{len(data):#x}) is outside guest RAM")
        self.ram[off:off + len(data)] = data

    def clear_exclusive(self) -> None:
        """Clear this vCPU's exclusive monitor (what CLREX does), leaving every register as it was.

        Used when the host switches to another vCPU (see ``Host._next_vcpu``). The engine
        has no API for its monitor, so it executes one `clrex` from a page outside guest RAM.
        """
        uc = self._uc
        if not self._clrex_mapped:
            uc.mem_map(_CLREX_PAGE, PAGE_SIZE, UC_PROT_ALL)
            uc.mem_write(_CLREX_PAGE, struct.pack("<I", _CLREX))
            self._clrex_mapped = True
        pc = self.pc
        self._in_clrex = True
        try:
            uc.emu_start(_CLREX_PAGE, 0, count=1)
        except UcError as e:  # pragma: no cover - the stub cannot fault
            raise InvariantError(f"clrex stub failed: {e}") from e
        finally:
            self._in_clrex = False
        self.pc = pc

    def flush_tlb(self) -> None:
        """Drop every cached translation (after stage-2 unmapped a page)."""
        self._uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def disasm_at(self, addr: int) -> str:
        try:
            return disassemble_one(self.read(addr, 4), addr)
        except IndexError:
            return "<not in guest RAM>"

    def insn_word(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    # ------------------------------------------------------------------ exceptions
    def vector_base(self, target_from_lower: bool) -> int:
        if target_from_lower:
            return VEC_LOWER_A64
        return VEC_CURRENT_SPX if (self.pstate & 1) else VEC_CURRENT_SP0

    def take_exception(self, kind: int, return_pc: int, esr: int | None = None,
                       far: int | None = None) -> int:
        """Enter EL1 as the architecture does (Arm ARM D1.10): returns the vector PC.

        ``kind`` is VEC_SYNC/VEC_IRQ/...; ESR is written for synchronous
        exceptions only, FAR for aborts.
        """
        pstate = self.pstate
        from_lower = ((pstate >> 2) & 3) == 0
        vector = self.reg("vbar_el1") + self.vector_base(from_lower) + kind
        self._wr(A.UC_ARM64_REG_ELR_EL1, return_pc)
        self._cpr_wr(_SYSREGS["spsr_el1"], pstate & 0xFFFFFFFF)
        if esr is not None:
            self._wr(A.UC_ARM64_REG_ESR_EL1, esr)
        if far is not None:
            self._wr(A.UC_ARM64_REG_FAR_EL1, far)
        self.set_pstate((pstate & ~0xFFFFFFFF) | (pstate & 0xF0000000) | PSTATE_EL1H_MASKED)
        self.pc = vector
        return vector

    def enter(self, pc: int, pstate: int) -> None:
        """Set PSTATE then PC: used by SDEI dispatch and completion."""
        self.set_pstate(pstate)
        self.pc = pc

    def save_context(self, nregs: int) -> tuple[list[int], int, int]:
        """x0..x(nregs-1), PC and PSTATE in one call: what an SDEI dispatch saves."""
        rd = self._rd
        regs = [rd(A.UC_ARM64_REG_X0 + i) for i in range(nregs)]
        return regs, rd(A.UC_ARM64_REG_PC), rd(A.UC_ARM64_REG_PSTATE)

    def restore_context(self, regs: list[int], pc: int, pstate: int) -> None:
        """Put back what ``save_context`` took (x0.., then PSTATE, then PC)."""
        wr = self._wr
        for i, value in enumerate(regs):
            wr(A.UC_ARM64_REG_X0 + i, value & (1 << 64) - 1)
        self.enter(pc, pstate)

    def enter_handler(self, pc: int, pstate: int, args: list[int], zero_to: int = 0) -> None:
        """Enter a handler: PSTATE, x0..x(len(args)-1) = args, the rest up to ``zero_to`` zeroed, PC."""
        self.set_pstate(pstate)
        wr = self._wr
        for i in range(max(len(args), zero_to)):
            wr(A.UC_ARM64_REG_X0 + i, (args[i] if i < len(args) else 0) & (1 << 64) - 1)
        self.pc = pc

    # ------------------------------------------------------------------ running
    def watch_code(self, base: int, code: bytes) -> None:
        """Find the erets and IRQ-unmasking instructions of freshly loaded code and watch them.

        An eret splits a run's time between ELs; an unmasking instruction ends the run
        right after it when an IRQ is waiting, so the IRQ is taken where the
        architecture takes it (Arm ARM D1.3.6: at the next context synchronization
        after PSTATE.I clears) and not some instructions later.
        """
        addrs = [base + off for off in range(0, len(code) - 3, 4)
                 if unmask_kind(int.from_bytes(code[off:off + 4], "little"))]
        self.mark_erets(addrs)

    def mark_erets(self, addrs: list[int]) -> None:
        """Watch these erets (and unmasking MSRs): a code hook limited to one address costs nothing elsewhere."""
        for addr in addrs:
            if addr not in self._watched:
                self._watched.add(addr)
                self._uc.hook_add(UC_HOOK_CODE, self._watch_hit, None, addr, addr + 3)

    def _counter(self) -> int:
        return struct.unpack("<Q", ctypes.string_at(self._counter_addr, 8))[0]

    def run(self, count: int) -> Exit:
        """Run at most ``count`` instructions from PC; report why it stopped.

        A trapped system register (GIC, timer) is emulated before returning
        ``SYSREG``: the host's handler runs with the clock at that instruction,
        and the host loop looks again at interrupts it may have changed.
        """
        if count <= 0:
            raise InvariantError("a run slice needs a positive instruction count")
        self._el_changes = []
        ex = self._run_once(count, 0)
        ex.segments = self._el_changes
        return ex

    def _run_once(self, count: int, done_before: int) -> Exit:
        self._hook_error = None
        self._stop = None
        self._abort = None
        self._sysreg = None
        self._unmask_at = None
        self._done_before = done_before
        self._base = 0
        self._count = count
        if _uclib is not None:
            # Straight to the C library (the binding's emu_start adds only a wrapper; every
            # hook here catches its own exceptions): `until` unused, exits are on.
            status = _uclib.uc_emu_start(self._uch, self._rd(A.UC_ARM64_REG_PC), 0, 0, count)
            err = UcError(status) if status else None
        else:  # pragma: no cover - other binding layouts
            try:
                self._uc.emu_start(self.pc, 0, count=count)
                err = None
            except UcError as e:
                err = e
        if self._host_error is not None:      # the host's own error, raised as the slow path would
            exc = self._host_error
            self._host_error = None
            raise exc
        if self._hook_error is not None:
            exc = self._hook_error
            self._hook_error = None
            raise HookError(f"error inside a vCPU hook at pc={self.pc:#x}: {exc!r}") from exc
        if self._stop is not None and self._stop.kind is ExitKind.SLICE_END:
            # The fast path handled a sysreg trap and the host wants its loop: nothing ran since.
            stop = self._stop
            self.pc = stop.pc
            return stop
        counter = self._counter() - self._base
        count = self._count
        if err is not None:
            if err.errno == UC_ERR_EXCEPTION and self._abort is not None:
                ipa, access = self._abort
                # The counter includes the faulting instruction, which did not retire.
                return Exit(ExitKind.STAGE2_ABORT, counter - 1, self.pc, ipa=ipa, access=access)
            raise InvariantError(f"unicorn stopped with {err} at pc={self.pc:#x}")
        if self._sysreg is not None:
            return self._finish_sysreg(counter)
        if self._unmask_at is not None:
            return self._step_unmask(counter - 1, done_before)
        if self._stop is not None:
            stop = self._stop
            stop.retired = counter
            return stop
        if counter == count + 1:
            return Exit(ExitKind.SLICE_END, count, self.pc)
        # Only wfi ends emu_start early on its own; PC is already past it.
        if self.insn_word(self.pc - 4) != 0xD503207F:
            raise InvariantError(f"vCPU stopped early for no known reason at pc={self.pc:#x}")
        return Exit(ExitKind.WFI, counter, self.pc)

    def _step_unmask(self, retired: int, done_before: int) -> Exit:
        """The run stopped on an instruction that clears PSTATE.I while an IRQ waits.

        The engine executes exactly that instruction (a one-instruction run with
        the watch disarmed) and the run ends there: the host takes the IRQ before
        the next instruction, as the hardware would.
        """
        self._stepping = True
        try:
            ex = self._run_once(1, done_before + retired)
        finally:
            self._stepping = False
        ex.retired += retired
        return ex

    def _finish_sysreg(self, counter: int) -> Exit:
        """Emulate the trapped MRS/MSR the hook stopped on, then step past it.

        Quirk: for a register the CPU model implements, the engine has already
        stepped PC and counted the next instruction's hook; for one it lacks
        (ICC_*), PC is still on the instruction. Either way the sysreg
        instruction itself retires here.
        """
        key, is_write, value, reg_id, insn_pc = self._sysreg
        stepped = self.pc != insn_pc
        self._stepped[key] = stepped or self._stepped.get(key, False)
        retired = counter - 1 + (0 if stepped else 1)
        self.clock_at_retired(self._done_before + retired - 1)
        if is_write:
            self.sysreg_write[key](value)
        else:
            self._wr(reg_id, self.sysreg_read[key]() & (1 << 64) - 1)
        self.pc = insn_pc + 4
        return Exit(ExitKind.SYSREG, retired, self.pc, sysreg=key)

    # ------------------------------------------------------------------ hooks
    def _tlb_fill(self, uc, vaddr, access, entry, _ud):
        try:
            if self._in_clrex and vaddr & PAGE_MASK == _CLREX_PAGE:   # filled for the stub only
                entry.paddr = _CLREX_PAGE
                entry.perms = UC_PROT_ALL
                return True
            if self.is_mapped(vaddr):
                entry.paddr = vaddr & PAGE_MASK
                entry.perms = UC_PROT_ALL
                if self.on_tlb_fill is not None:
                    self.on_tlb_fill(vaddr)
                return True
            if self._abort is None:   # only the first refusal is the guest's access
                kind = "fetch" if access == UC_MEM_FETCH else "write" if access == UC_MEM_WRITE else "read"
                self._abort = (vaddr, kind)
            return False
        except BaseException as e:  # never let unicorn swallow it
            self._hook_error = e
            uc.emu_stop()
            return False

    def _intr(self, uc, intno, _ud):
        try:
            pc = self._rd(A.UC_ARM64_REG_PC)
            if intno in (_INTNO_HVC, _INTNO_SWI, _INTNO_SMC):
                imm = (self.insn_word(pc - 4) >> 5) & 0xFFFF
                kind = {_INTNO_HVC: ExitKind.HVC, _INTNO_SWI: ExitKind.SVC, _INTNO_SMC: ExitKind.SMC}[intno]
                if kind is ExitKind.HVC and self.exit_continue is not None and not self._stepping:
                    self._hvc_inline(pc, imm)
                    return
                self._stop = Exit(kind, 0, pc, imm=imm)
            elif intno == _INTNO_BKPT:
                self._stop = Exit(ExitKind.BRK, 0, pc, imm=(self.insn_word(pc) >> 5) & 0xFFFF)
            elif intno == _INTNO_UDEF:
                self._stop = Exit(ExitKind.UNDEF, 0, pc)
            else:
                raise InvariantError(f"unexpected unicorn interrupt {intno} at pc={pc:#x}")
        except BaseException as e:
            self._hook_error = e
        uc.emu_stop()

    def _watch_hit(self, uc, address, size, _ud):
        # Runs before the watched instruction executes.
        try:
            kind = unmask_kind(self.insn_word(address))   # the code may have been replaced since
            if kind is None:
                return
            if self.irq_waiting and not self._stepping and self._clears_i(kind, address):
                self._unmask_at = address
                uc.emu_stop()                 # before it executes; _step_unmask runs it alone
                return
            if kind == "eret":
                # Instructions so far (this one included) ran at EL1; what follows
                # runs at the EL in SPSR_EL1.
                spsr = self._cpr_rd(_SYSREGS["spsr_el1"])
                self._el_changes.append((self._done_before + self._counter() - self._base, (spsr >> 2) & 3))
        except BaseException as e:
            self._hook_error = e
            uc.emu_stop()

    def _clears_i(self, kind: str, address: int) -> bool:
        """Will this instruction clear PSTATE.I (which is set now)?"""
        if not self._rd(A.UC_ARM64_REG_PSTATE) & PSTATE_I:
            return False
        if kind == "eret":
            return not self._cpr_rd(_SYSREGS["spsr_el1"]) & PSTATE_I
        if kind == "daifclr":
            return True
        rt = self.insn_word(address) & 0x1F      # msr daif, xt: the new DAIF is xt's bits 9:6
        return rt == 31 or not self.x(rt) & PSTATE_I

    def _sys(self, key: SysregKey, value: int, reg_id: int, is_write: bool) -> int:
        if key not in (self.sysreg_write if is_write else self.sysreg_read):
            return 0  # not ours: the CPU model executes it
        if self.exit_continue is not None and self._stepped.get(key) is False and not self._stepping:
            return self._sys_inline(key, is_write, value, reg_id)
        # Stop here; ``_finish_sysreg`` emulates it with the clock at this instruction.
        self._sysreg = (key, is_write, value, reg_id, self._rd(A.UC_ARM64_REG_PC))
        self._uc.emu_stop()
        return 1

    def _sys_inline(self, key: SysregKey, is_write: bool, value: int, reg_id: int) -> int:
        """Fast path: emulate the trapped register without ending ``emu_start``.

        Does what ``_finish_sysreg`` and the host loop would do after a SYSREG exit (the
        host accounts the slice and charges an SGI at this instruction) and then asks
        ``exit_continue`` for the next slice's count: the engine's own limit
        (``uc->emu_count``, next to the counter) is moved so the run ends exactly where
        the slow path's next slice would. When the host's loop has work to do here (an
        IRQ to take, an event due) the run ends instead, as the slow path's would.
        Only for registers the CPU model lacks (ICC_*), whose trap leaves PC on the
        instruction: PC is stepped by hand and the engine's count stays exact.
        """
        uc = self._uc
        insn_pc = self._rd(A.UC_ARM64_REG_PC)
        counter = self._counter() - self._base        # this instruction included
        try:
            self.clock_at_retired(counter - 1)
            if is_write:
                self.sysreg_write[key](value)
            else:
                self._wr(reg_id, self.sysreg_read[key]() & (1 << 64) - 1)
            ex = Exit(ExitKind.SYSREG, counter, insn_pc + 4, sysreg=key, segments=self._el_changes)
            self._el_changes = []
            nxt = self.exit_continue(ex)
        except BaseException as e:
            self._host_error = e
            self._stop = Exit(ExitKind.SLICE_END, 0, insn_pc + 4)
            uc.emu_stop()
            return 1
        self._wr(A.UC_ARM64_REG_PC, insn_pc + 4)       # the engine lacks it: step by hand
        if nxt is None:
            self._stop = Exit(ExitKind.SLICE_END, 0, insn_pc + 4)
            uc.emu_stop()
            return 1
        self._base += counter
        self._count = nxt
        self.inline_traps += 1
        # uc->emu_count: the engine stops once its counter passes it.
        ctypes.c_uint64.from_address(self._counter_addr + 8).value = self._base + nxt
        return 1

    def _sys_raw(self, reg_id: int, ptr: int, is_write: bool) -> int:
        try:
            crn, crm, op0, op1, op2, value = _CP_REG.unpack(ctypes.string_at(ptr, _CP_REG.size))
            return self._sys((op0, op1, crn, crm, op2), value, reg_id, is_write)
        except BaseException as e:
            self._hook_error = e
            self._uc.emu_stop()
            return 1

    def _hvc_inline(self, pc: int, imm: int) -> None:
        """Fast path: a hypercall served inside the engine's interrupt hook.

        The hook runs between translation blocks (the engine is taking the exception), so
        the host may change registers, PC and PSTATE here as after a stop. The engine's count
        already includes the hvc, as at a stop. As for a trapped register, the host accounts
        the slice, serves the call and answers the next slice's count, or None to stop.
        """
        counter = self._counter() - self._base
        ex = Exit(ExitKind.HVC, counter, pc, imm=imm, segments=self._el_changes)
        self._el_changes = []
        try:
            nxt = self.exit_continue(ex)
        except BaseException as e:
            self._host_error = e
            self._stop = Exit(ExitKind.SLICE_END, 0, pc)
            self._uc.emu_stop()
            return
        if nxt is None:
            self._stop = Exit(ExitKind.SLICE_END, 0, self._rd(A.UC_ARM64_REG_PC))
            self._uc.emu_stop()
            return
        self._base += counter
        self._count = nxt
        self.inline_traps += 1
        ctypes.c_uint64.from_address(self._counter_addr + 8).value = self._base + nxt

    def _mrs(self, uc, reg, cp, _ud):
        try:
            return self._sys((cp.op0, cp.op1, cp.crn, cp.crm, cp.op2), cp.val, reg, False)
        except BaseException as e:
            self._hook_error = e
            uc.emu_stop()
            return 1

    def _msr(self, uc, reg, cp, _ud):
        try:
            return self._sys((cp.op0, cp.op1, cp.crn, cp.crm, cp.op2), cp.val, reg, True)
        except BaseException as e:
            self._hook_error = e
            uc.emu_stop()
            return 1


def decode_esr(esr: int) -> str:
    """ESR_EL1 in words, for error messages (Arm ARM D17.2.37)."""
    ec = (esr >> 26) & 0x3F
    iss = esr & 0x1FFFFFF
    name = EC_NAMES.get(ec, f"EC {ec:#x}")
    text = f"ESR={esr:#x} (EC={ec:#x}: {name}"
    if ec in (EC_SVC64, EC_HVC64, 0x17, EC_BRK64):
        text += f", imm={iss & 0xFFFF:#x}"
    if ec in (EC_DABT_LOW, EC_DABT_CUR):
        text += ", write" if iss & (1 << 6) else ", read"
    return text + ")"
