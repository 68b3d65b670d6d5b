"""Architectural constants of AArch64 that more than one layer needs (no unicorn here).

The vCPU (``cpu.py``) implements them; services such as SDEI and the APF delivery
designs name them without importing the CPU layer.
"""

# PSTATE fields (Arm ARM D1.4 / C5.2.18 SPSR_EL1).
PSTATE_M_MASK = 0xF
MODE_EL0T = 0b0000
MODE_EL1T = 0b0100
MODE_EL1H = 0b0101
PSTATE_DAIF = 0x3C0
PSTATE_I = 1 << 7
PSTATE_NZCV = 0xF0000000
PSTATE_EL1H_MASKED = MODE_EL1H | PSTATE_DAIF  # 0x3c5: how exception entry leaves PSTATE

# Vector table offsets from VBAR_EL1 (Arm ARM D1.10.2, table D1-7).
VEC_CURRENT_SP0 = 0x000
VEC_CURRENT_SPX = 0x200
VEC_LOWER_A64 = 0x400
VEC_SYNC, VEC_IRQ, VEC_FIQ, VEC_SERROR = 0x000, 0x080, 0x100, 0x180

# ESR_EL1 exception classes (Arm ARM D17.2.37).
EC_UNKNOWN = 0x00
EC_WFX = 0x01
EC_SVC64 = 0x15
EC_HVC64 = 0x16
EC_SMC64 = 0x17
EC_IABT_LOW, EC_IABT_CUR = 0x20, 0x21
EC_DABT_LOW, EC_DABT_CUR = 0x24, 0x25
EC_BRK64 = 0x3C
ESR_IL = 1 << 25
# Data/instruction fault status code: synchronous external abort, not on a table walk
# (Arm ARM D17.2.37, DFSC 0b010000). KVM injects this one (kvm_inject_dabt).
FSC_EXTABT = 0x10


def el_of(pstate: int) -> int:
    """The exception level PSTATE.M names."""
    return (pstate >> 2) & 3
