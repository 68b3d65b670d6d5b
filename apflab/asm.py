"""Assembler front end: GNU-as style AArch64 source -> bytes, symbols, line map.

Keystone does the encoding and capstone the decoding. Keystone alone is not
enough for student code: it has no GNU numeric local labels (``1:`` / ``1b``),
reports no line numbers and no symbols, and mishandles common constructs --
some silently (wrong ``adrp``, wrong numeric branch targets after a
``.balign``, dropped ``.inst`` and out-of-range ``.word``), some by killing the
whole Python process (segfault on ``.text``, ``LLVM ERROR`` abort on an
out-of-range or misaligned branch, endless loop on ``.byte label``). So this
module has its own front end (comments, statements, labels, directives) and
runs keystone twice:

1. *Layout pass.* Every instruction whose operands use a symbol becomes a
   4-byte placeholder and every symbolic data value 0, so nothing can go
   wrong in keystone's fixups. A ``.quad`` table appended after the code reads
   back the address of every statement and label, and the value of every
   symbolic expression.
2. *Code pass.* Those values are checked in Python (branch reach and
   alignment, data widths) and written back: data and immediates as numbers,
   branch targets as ``<statement label> +- offset`` (a form keystone gets
   right), ``adrp`` pre-encoded. Literal pools (``ldr x0, =value``) are built
   here too, because keystone's own abort the process when far away.

The result is checked against the layout (every instruction 4 bytes, every
data directive its declared size, every PC-relative instruction decoding to
its intended target). When keystone fails, each statement is assembled alone
with all labels defined, and the first that fails is blamed.

Limitations: ``.rept``/``.irp``/``.macro``/``.if`` blocks are passed to
keystone as they are (no range checks inside, no numeric labels, labels inside
them are not in ``Program.symbols``); a single flat section (``.text``,
``.data``, ``.section`` ... are accepted and ignored); ``ldr x0, =value`` always
uses a literal (never turned into ``mov``).
"""

from __future__ import annotations

import bisect
import re
import struct
import threading
from dataclasses import dataclass, field

import capstone
import keystone

from .errors import AsmError, InvariantError, ParameterError

__all__ = ["Program", "assemble", "disassemble", "disassemble_one"]


@dataclass(frozen=True)
class Program:
    """An assembled guest program, ready to be copied to ``base``."""

    base: int                            # load address of code[0]
    code: bytes                          # assembled bytes
    symbols: dict[str, int]              # every source label -> absolute address
    lines: dict[int, tuple[int, str]]    # statement start address -> (line no, line text)


# ---------------------------------------------------------------------------
# engine handles (created lazily, shared; keystone/capstone handles are not
# thread-safe, hence the lock)

_lock = threading.RLock()
_ks_handle: keystone.Ks | None = None
_cs_handle: capstone.Cs | None = None


def _ks() -> keystone.Ks:
    global _ks_handle
    if _ks_handle is None:
        _ks_handle = keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN)
    return _ks_handle


def _cs() -> capstone.Cs:
    global _cs_handle
    if _cs_handle is None:
        _cs_handle = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    return _cs_handle


def _ks_asm(text: str, base: int) -> bytes:
    """Assemble ``text`` at ``base``; raises keystone.KsError."""
    with _lock:
        # Passed as UTF-8 bytes: the binding would otherwise encode as ASCII
        # and fail on any non-ASCII character inside a string literal.
        enc, _count = _ks().asm(text.encode("utf-8"), base, True)
    return enc or b""


# ---------------------------------------------------------------------------
# disassembly

def disassemble(code: bytes, address: int, count: int = 1) -> list[tuple[int, str]]:
    """Decode up to ``count`` 4-byte words of ``code`` placed at ``address``.

    Returns ``[(address, "mnemonic op_str")]``. A word capstone cannot decode
    becomes ``".inst 0x%08x"`` instead of ending the listing (capstone's own
    loop stops at the first bad word). A trailing partial word is ignored.
    """
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, not {count!r}")
    data = bytes(code)
    out: list[tuple[int, str]] = []
    with _lock:
        cs = _cs()
        for k in range(min(count, len(data) // 4)):
            word = data[4 * k:4 * k + 4]
            addr = address + 4 * k
            insn = next(cs.disasm_lite(word, addr, 1), None)
            if insn is None:
                text = f".inst {int.from_bytes(word, 'little'):#010x}"
            else:
                text = f"{insn[2]} {insn[3]}".strip()
            out.append((addr, text))
    return out


def disassemble_one(code4: bytes, address: int) -> str:
    """Decode exactly one 4-byte instruction word at ``address``."""
    if len(code4) != 4:
        raise ValueError(f"need exactly 4 bytes, got {len(code4)}")
    return disassemble(code4, address, 1)[0][1]


# ---------------------------------------------------------------------------
# lexical rules

_NAME = r"[A-Za-z_.$][\w.$]*"
_LABEL_RE = re.compile(rf"\s*({_NAME}|\d+)\s*:", re.A)
_ASSIGN_RE = re.compile(rf"\s*({_NAME})\s*=(?!=)", re.A)
_DIRECTIVE_RE = re.compile(r"\s*(\.[\w.$]*)", re.A)
_MNEMONIC_RE = re.compile(r"\s*([\w.]+)", re.A)
# an identifier not glued to a preceding word (so `x1f` in `0x1f`, `16b` in
# `v0.16b` and `\arg` in macros are not names); a lone `.` is the location
_IDENT_RE = re.compile(rf"(?<![\w.$\\])({_NAME})", re.A)
# GNU numeric local label reference: 1b / 2f, but not 0x1b, v0.16b, x1, b1
_NUMREF_RE = re.compile(r"(?<![\w.$\\])(\d+)([bf])(?![\w.$])", re.A)
# a token starting with a digit (exponent signs included) and the forms of it
# keystone accepts; it hangs on others in data (`.word 0x-4`, `.word 08`)
_NUMTOK_RE = re.compile(r"(?<![\w.$\\])\d(?:[eE][+-]\d|[\w.])*", re.A)
_INT_RE = re.compile(r"0[xX][0-9a-fA-F]+|0[bB][01]+|0[0-7]*|[1-9]\d*", re.A)
_FLOAT_RE = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", re.A)
_EXPR_TOKEN_RE = re.compile(
    rf"\s*(?:(?P<val>\d(?:[eE][+-]\d|[\w.])*|{_NAME}|'\0+)"
    r"|(?P<op><<|>>|<=|>=|==|!=|<>|&&|\|\||[-+*/%&|^~!<>()]))", re.A)
_RELOC_RE = re.compile(r"#?\s*:([A-Za-z0-9_]+):")
_REGISTER_RE = re.compile(r"(?:[xwbhsdqvz]\d{1,2}|[xw]zr|w?sp|lr|fp)", re.A | re.I)
_CONDS = "eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al|nv"
_BCOND_RE = re.compile(rf"b\.?(?:{_CONDS})", re.A)

_RESERVED = ".L__apf_"
_NUL = "\0"          # replaces string contents in the scanning mask

# PC-relative instructions: which operand is the target, range in bytes
# (signed, +-), whether the target must be 4-byte aligned.
_PCREL = {
    "b": (0, 1 << 27, True), "bl": (0, 1 << 27, True),
    "cbz": (1, 1 << 20, True), "cbnz": (1, 1 << 20, True),
    "tbz": (2, 1 << 15, True), "tbnz": (2, 1 << 15, True),
    "adr": (1, 1 << 20, False), "adrp": (1, 1 << 32, False),
    "ldr": (1, 1 << 20, True), "ldrsw": (1, 1 << 20, True), "prfm": (1, 1 << 20, True),
}
_BCOND = (0, 1 << 20, True)

_DATA_WIDTH = {".byte": 1, ".hword": 2, ".2byte": 2, ".short": 2,
               ".word": 4, ".4byte": 4, ".long": 4, ".int": 4,
               ".quad": 8, ".8byte": 8, ".xword": 8}
# keystone emits nothing for `.inst` and rejects `.dword`: spell them its way
_RENAMED = {".inst": ".word", ".dword": ".quad"}
# directives with no meaning for one flat blob; some crash keystone (`.text`
# segfaults, `.section` silently yields empty output, `.size` and `.arch` are
# rejected), so they are dropped before keystone sees them
_IGNORED = {".text", ".data", ".bss", ".rodata", ".section", ".pushsection",
            ".popsection", ".previous", ".subsection", ".size", ".type",
            ".arch", ".arch_extension", ".cpu", ".local", ".weak", ".hidden",
            ".protected", ".internal", ".global", ".globl", ".file", ".ident",
            ".loc", ".func", ".endfunc"}
_UNSUPPORTED = {
    ".org": "`.org` is not supported by keystone; use `.balign` or `.space`",
    ".include": "`.include` is not supported; paste the file in",
    ".incbin": "`.incbin` is not supported; use `.byte`/`.quad`",
    ".eqv": "`.eqv` is not supported by keystone; use `.equ`",
}
_ALIGN = {".balign": False, ".align": True, ".p2align": True}   # True: power of 2
# Argument shapes of the directives passed on to keystone (any other is
# refused: keystone's directive parser hangs on malformed arguments such as
# `.quad ,`, `.byte 1,,2` or `.word 1)`, so they are checked here first):
# (min items, max items or None, what an item is)
_ARGS = {
    **{d: (0, None, "expr") for d in (*_DATA_WIDTH, ".float", ".single", ".double")},
    **{d: (1, 2, "expr") for d in (".space", ".skip", ".zero")},
    **{d: (1, 3, "expr") for d in (".fill", *_ALIGN)},
    **{d: (1, 1, "expr") for d in (".rept", ".if", ".elseif", ".ifeq", ".ifne", ".ifge",
                                   ".ifgt", ".ifle", ".iflt")},
    **{d: (0, 0, "") for d in (".ltorg", ".pool", ".endr", ".endm", ".endif", ".else",
                               ".exitm", ".end")},
    **{d: (0, None, "string") for d in (".ascii", ".asciz", ".string")},
    **{d: (1, 1, "name") for d in (".ifdef", ".ifndef")},
    **{d: (2, 2, "equ") for d in (".equ", ".set", ".equiv")},
    # parsed by keystone alone
    **{d: (0, None, "free") for d in (".macro", ".irp", ".irpc", ".ifc", ".ifnc", ".ifb",
                                      ".ifnb")},
}
_MAX_BYTES = 1 << 28            # .space/.fill/.balign beyond this: refused
_SIZED = {".space", ".skip", ".zero", ".fill", ".rept", *_ALIGN}
_POOL = {".ltorg", ".pool"}
_EQU = {".equ", ".set", ".equiv"}
_REPEAT_OPEN = {".rept", ".irp", ".irpc", ".macro"}
_BLOCK_CLOSE = {".endr", ".endm", ".endif"}
_RELOC_SHIFT = {"lo12": None, "abs_g0": 0, "abs_g0_nc": 0, "abs_g1": 16,
                "abs_g1_nc": 16, "abs_g2": 32, "abs_g2_nc": 32, "abs_g3": 48}

_KS_REASON = {
    keystone.KS_ERR_ASM_MNEMONICFAIL: "invalid mnemonic",
    keystone.KS_ERR_ASM_INVALIDOPERAND: "invalid operand",
    keystone.KS_ERR_ASM_MISSINGFEATURE: "instruction not supported by keystone",
    keystone.KS_ERR_ASM_SYMBOL_MISSING: "undefined symbol",
    keystone.KS_ERR_ASM_SYMBOL_REDEFINED: "symbol defined twice",
    keystone.KS_ERR_ASM_STAT_TOKEN: "unexpected token at start of statement",
    keystone.KS_ERR_ASM_DIRECTIVE_VALUE_RANGE: "value out of range",
    keystone.KS_ERR_ASM_DIRECTIVE_INVALID: "invalid directive arguments",
    keystone.KS_ERR_ASM_DIRECTIVE_UNKNOWN: "unknown directive",
    keystone.KS_ERR_ASM_EXPR_TOKEN: "unknown token in expression",
    keystone.KS_ERR_ASM_LABEL_INVALID: "invalid label",
    keystone.KS_ERR_ASM_FRAGMENT_INVALID: "unsupported directive",
}


def _ks_reason(err: keystone.KsError, stmt: "_Stmt | None" = None) -> str:
    """Keystone's error in plain words (its codes above 514 have no names:
    they are AArch64 operand-match failures)."""
    code = err.errno
    if stmt is not None and stmt.kind in ("directive", "data", "align", "pool") and code in (
            keystone.KS_ERR_ASM_MNEMONICFAIL, keystone.KS_ERR_ASM_STAT_TOKEN):
        return f"unknown or unsupported directive `{stmt.name}`"
    if code in _KS_REASON:
        reason = _KS_REASON[code]
    elif code > keystone.KS_ERR_ASM_MNEMONICFAIL:
        reason = "invalid operand (immediate out of range, or wrong kind of operand)"
    else:
        reason = re.sub(r"\s*\(KS_ERR_\w+\)$", "", str(err)).lower() or "error"
    if stmt is not None and stmt.kind == "block":
        what = f"macro `{stmt.name}`" if not stmt.name.startswith(".") else f"this {stmt.name} block"
        reason += f" (inside {what})"
    elif code == keystone.KS_ERR_ASM_MNEMONICFAIL and stmt is not None and stmt.name:
        reason += f" `{stmt.name}`"
    return reason


def _split_top(mask: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Spans of the comma-separated items of mask[start:end], commas inside
    (), [] or {} not counted."""
    end = len(mask) if end is None else end
    spans, depth, s = [], 0, start
    for i in range(start, end):
        c = mask[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            spans.append((s, i))
            s = i + 1
    if mask[s:end].strip() or spans:
        spans.append((s, end))
    return [_trim(mask, a, b) for a, b in spans]


def _trim(mask: str, a: int, b: int) -> tuple[int, int]:
    while a < b and mask[a].isspace():
        a += 1
    while b > a and mask[b - 1].isspace():
        b -= 1
    return a, b


def _expr_end(mask: str, p: int) -> int:
    """End of the immediate expression starting at p (stops at , ] } ! at depth 0)."""
    depth = 0
    for i in range(p, len(mask)):
        c = mask[i]
        if c == "(":
            depth += 1
        elif c == ")":
            if depth == 0:
                return i
            depth -= 1
        elif c in ",]}!" and depth == 0:
            return i
    return len(mask)


def _int_value(tok: str) -> int | None:
    """Value of a GNU integer literal (0x, 0b, leading-0 octal), else None."""
    if not _INT_RE.fullmatch(tok):
        return None
    low = tok.lower()
    if low.startswith(("0x", "0b")):
        return int(low[2:], 16 if low[1] == "x" else 2)
    return int(low, 8 if low[0] == "0" else 10)


def _expr_ok(mask: str) -> bool:
    """Is mask a well-formed GNU expression (syntax only)?"""
    mask = mask.strip()
    toks: list[str | None] = []          # None: an operand
    pos = 0
    while pos < len(mask):
        m = _EXPR_TOKEN_RE.match(mask, pos)
        if not m:
            return False
        toks.append(None if m.group("val") else m.group("op"))
        pos = m.end()
    if not toks or toks.count("(") > 32:
        return False
    i = 0

    def unary() -> bool:
        nonlocal i
        while i < len(toks) and toks[i] in ("-", "+", "~", "!"):
            i += 1
        if i >= len(toks):
            return False
        if toks[i] is None:
            i += 1
            return True
        if toks[i] != "(":
            return False
        i += 1
        if not binary() or i >= len(toks) or toks[i] != ")":
            return False
        i += 1
        return True

    def binary() -> bool:
        nonlocal i
        if not unary():
            return False
        while i < len(toks) and toks[i] not in (None, "(", ")", "~", "!"):
            i += 1
            if not unary():
                return False
        return True

    return binary() and i == len(toks)


def _names(mask: str) -> list[str]:
    return _IDENT_RE.findall(mask)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# ---------------------------------------------------------------------------
# statements

@dataclass
class _Stmt:
    index: int
    line: int
    code: str                      # comment-free text, labels removed
    mask: str                      # same, string/char contents blanked
    labels: list[str] = field(default_factory=list)
    kind: str = "empty"            # empty insn data align pool assign directive block
    name: str = ""                 # mnemonic or directive, lower case
    in_block: bool = False         # inside .rept/.macro/.if: passed through verbatim
    opens_block: bool = False
    symbolic: bool = False         # instruction operands depend on symbols
    target: tuple | None = None    # (slot, mnemonic, reach, aligned) for PC-relative
    lit: tuple | None = None       # ldr Rt, =expr: (stmt, label, width, slot) of its literal
    lits: list = field(default_factory=list)    # .ltorg: the literals it holds
    edits: list = field(default_factory=list)   # (start, end, slot, how)
    width: int = 0                 # data: element width
    nelems: int = 0                # data: number of elements
    exprs: list = field(default_factory=list)   # table expressions owned by this stmt
    inst: bool = False             # written as `.inst`: an instruction for "empty program"
    body1: str = ""                # layout-pass text
    body2: str = ""                # code-pass text


def _lex(source: str, src_lines: list[str]) -> list[tuple[int, str, str]]:
    """Split source into statements (line, code, mask): strips comments,
    splits on newlines and `;` (a statement separator in GNU as for AArch64,
    not a comment), keeps string and character literals intact."""
    out: list[tuple[int, str, str]] = []
    code: list[str] = []
    mask: list[str] = []
    start = [0]

    def put(text: str, masked: str, line: int) -> None:
        if not start[0] and not text.isspace():
            start[0] = line
        code.append(text)
        mask.append(masked)

    def flush() -> None:
        text = "".join(code)
        if text.strip():
            out.append((start[0], text, "".join(mask)))
        code.clear()
        mask.clear()
        start[0] = 0

    def fail(msg: str, line: int) -> AsmError:
        return AsmError(msg, line, src_lines[line - 1])

    i, n, line, blank = 0, len(source), 1, True
    while i < n:
        c = source[i]
        if c == "\n":
            flush()
            line += 1
            blank = True
            i += 1
        elif c == "/" and source.startswith("/*", i):
            end = source.find("*/", i + 2)
            if end < 0:
                raise fail("unterminated /* comment", line)
            newlines = source.count("\n", i, end)
            if newlines:
                flush()
                line += newlines
                blank = False
            put(" ", " ", line)
            i = end + 2
        elif c == "/" and source.startswith("//", i) or c == "#" and blank:
            # `#` starts a comment only as the first thing on a line, so
            # `mov x0, #1` keeps its immediate
            end = source.find("\n", i)
            i = n if end < 0 else end
        elif c == ";":
            flush()
            blank = False
            i += 1
        elif c == '"':
            j = i + 1
            while j < n and source[j] != '"':
                if source[j] == "\n":
                    raise fail("unterminated string", line)
                j += 2 if source[j] == "\\" else 1
            if j >= n:
                raise fail("unterminated string", line)
            put(source[i:j + 1], '"' + _NUL * (j - i - 1) + '"', line)
            blank = False
            i = j + 1
        elif c == "'":
            # character literal 'a' or '\n' (the closing quote is optional in GNU as)
            j = i + (3 if source.startswith("\\", i + 1) else 2)
            if j < n and source[j] == "'":
                j += 1
            lit = source[i:min(j, n)]
            if "\n" in lit:
                raise fail("bad character literal", line)
            put(lit, "'" + _NUL * (len(lit) - 1), line)
            blank = False
            i = j
        else:
            if c == "\r":
                c = " "
            put(c, c, line)
            if not c.isspace():
                blank = False
            i += 1
    flush()
    return out


class _Assembly:
    """One run of assemble(): parse, layout pass, checks, code pass, verify."""

    def __init__(self, source: str, base: int):
        self.base = base
        self.src_lines = source.split("\n")
        self.stmts: list[_Stmt] = []
        self.labels: dict[str, int] = {}      # user label -> line
        self.equs: set[str] = set()
        self.macros: set[str] = set()
        self.generated: set[str] = set()      # numeric local label names
        self.table_labels: list[str] = []     # user labels outside blocks
        self.slots: list[str] = []            # expression table entries
        self.final_lits: list[tuple] = []     # literals of the pool at the end

    # -- helpers ------------------------------------------------------------

    def error(self, msg: str, stmt: _Stmt | None) -> AsmError:
        if stmt is None:
            return AsmError(msg)
        return AsmError(msg, stmt.line, self.src_lines[stmt.line - 1].strip())

    @staticmethod
    def slabel(i: int) -> str:
        return f"{_RESERVED}s{i}"

    def add_slot(self, stmt: _Stmt, code: str, mask: str) -> int:
        """Register expression code (mask: its scanning mask) for the table,
        with `.` meaning this statement's address; check its symbols exist."""
        known = self._known
        for nm in _names(mask):
            if nm != "." and nm not in known:
                raise self.error(f"undefined symbol `{nm}`", stmt)
        if not code.strip():
            raise self.error("missing expression", stmt)
        parts, last = [], 0
        for m in re.finditer(r"(?<![\w.$])\.(?![\w.$])", mask):
            parts += [code[last:m.start()], self.slabel(stmt.index)]
            last = m.end()
        parts.append(code[last:])
        expr = "".join(parts).strip()
        self.slots.append(expr)
        stmt.exprs.append(expr)
        return len(self.slots) - 1

    def symbolic(self, mask: str) -> bool:
        known = self._known
        return any(nm == "." or nm in known for nm in _names(mask))

    # -- parsing --------------------------------------------------------------

    def parse(self, source: str) -> None:
        raw = _lex(source, self.src_lines)
        numdefs: dict[str, list[tuple[int, str]]] = {}
        stack: list[str] = []
        ended = False
        for line, code, mask in raw:
            if ended:
                break
            st = _Stmt(len(self.stmts), line, code, mask)
            st.in_block = bool(stack)
            # labels: `name:` (several allowed) before the statement proper
            pos = 0
            while (m := _LABEL_RE.match(mask, pos)):
                name = m.group(1)
                if name.isdigit():
                    if any(b in _REPEAT_OPEN for b in stack):
                        raise self.error(f"numeric local label `{name}:` inside a .rept/.irp/"
                                         ".macro block is not supported", st)
                    defs = numdefs.setdefault(name, [])
                    gen = f"{_RESERVED}n{name}_{len(defs)}"
                    defs.append((st.index, gen))
                    self.generated.add(gen)
                    st.labels.append(gen)
                else:
                    self.define(name, st)
                    if not st.in_block:
                        self.table_labels.append(name)
                    st.labels.append(name)
                pos = m.end()
            st.code, st.mask = code[pos:].strip(), mask[pos:].strip()
            if len(st.code) != len(st.mask):
                raise InvariantError("asm: lexer mask out of step")
            body = st.mask
            if not body:
                st.kind = "empty"
            elif (m := _ASSIGN_RE.match(body)) and not body.startswith("."):
                st.kind = "assign"
                self.define_equ(m.group(1), st)
            elif body.startswith("."):
                st.name = _DIRECTIVE_RE.match(body).group(1).lower()
                self.directive(st, stack)
                if st.name == ".end":
                    ended = True
                    st.kind, st.code, st.mask = "empty", "", ""
            else:
                m = _MNEMONIC_RE.match(body)
                if not m:
                    raise self.error("expected an instruction, a directive or a label", st)
                st.kind = "insn"
                st.name = m.group(1).lower()
            self.stmts.append(st)
        if stack:
            raise self.error(f"`{stack[-1]}` block is never closed",
                             next(s for s in reversed(self.stmts) if s.opens_block))
        # second sweep: GNU numeric label references, nearest definition
        for st in self.stmts:
            st.code, st.mask = self.rewrite_numrefs(st, numdefs)
        # malformed numbers hang keystone, huge ones crash it
        for st in self.stmts:
            for m in _NUMTOK_RE.finditer(st.mask):
                tok = m.group(0)
                value = _int_value(tok)
                if value is not None:
                    if value >= 1 << 64:
                        raise self.error(f"number {tok} does not fit in 64 bits", st)
                elif not (_FLOAT_RE.fullmatch(tok) and st.kind in ("insn", "directive", "block")):
                    raise self.error(f"malformed number `{tok}`", st)

    def define(self, name: str, st: _Stmt) -> None:
        if name.startswith(_RESERVED):
            raise self.error(f"label names starting with `{_RESERVED}` are reserved", st)
        if name in self.labels:
            raise self.error(f"label `{name}` already defined on line {self.labels[name]}", st)
        if name in self.equs:
            raise self.error(f"`{name}` is already defined by .equ/.set", st)
        self.labels[name] = st.line

    def define_equ(self, name: str, st: _Stmt) -> None:
        if name in self.labels:
            raise self.error(f"`{name}` is already a label (line {self.labels[name]})", st)
        self.equs.add(name)

    def directive(self, st: _Stmt, stack: list[str]) -> None:
        """Classify a directive; drop or respell the ones keystone mishandles
        (also inside blocks, where they would crash it just the same)."""
        name = st.name
        if name in _UNSUPPORTED:
            raise self.error(_UNSUPPORTED[name], st)
        if name in _IGNORED or name.startswith(".cfi_"):
            st.kind = "block" if st.in_block else "empty"
            st.code = st.mask = ""
            return
        if name in _RENAMED:
            new = _RENAMED[name]
            st.code = new + st.code[len(name):]
            st.mask = new + st.mask[len(name):]
            st.inst = name == ".inst"
            st.name, name = new, new
        if name not in _ARGS:
            raise self.error(f"unknown or unsupported directive `{name}`", st)
        if not (st.in_block and "\\" in st.code):      # macro bodies: \args unknown yet
            self.check_args(st)
        opens = name in _REPEAT_OPEN or name.startswith(".if")
        if st.in_block:
            st.kind = "block"
            if name in _BLOCK_CLOSE:
                stack.pop()
            elif opens:
                stack.append(name)
            return
        if opens:
            st.kind, st.opens_block = "block", True
            stack.append(name)
            if name == ".macro":
                m = _IDENT_RE.search(st.mask, len(name))
                if m:
                    self.macros.add(m.group(1).lower())
            return
        if name in _BLOCK_CLOSE or name in (".else", ".elseif", ".exitm"):
            raise self.error(f"`{name}` without an open block", st)
        if name in _DATA_WIDTH:
            st.kind = "data"
            st.width = _DATA_WIDTH[name]
        elif name in _ALIGN:
            st.kind = "align"
        elif name in _POOL:
            st.kind = "pool"
        else:
            st.kind = "directive"
            if name in _EQU:
                m = _IDENT_RE.search(st.mask, len(name))
                self.define_equ(m.group(1), st)

    def check_args(self, st: _Stmt) -> None:
        """Check a directive's arguments before keystone sees them."""
        name = st.name
        lo, hi, kind = _ARGS[name]
        if kind == "free":
            return
        items = _split_top(st.mask, len(name)) if st.mask[len(name):].strip() else []
        if kind == "equ":
            # keystone also loops forever on a malformed name (`.equ E-4, 1`)
            ok = len(items) == 2 and re.fullmatch(_NAME, st.mask[slice(*items[0])], re.A) \
                and _expr_ok(st.mask[slice(*items[1])])
            if not ok:
                raise self.error(f"expected `{name} NAME, value`", st)
            return
        if not lo <= len(items) <= (len(items) if hi is None else hi):
            want = "no arguments" if hi == 0 else f"{lo}" + ("" if hi == lo else
                                                           f" to {hi}" if hi else " or more")
            raise self.error(f"`{name}` takes {want} argument(s)", st)
        for a, b in items:
            item = st.mask[a:b]
            ok = (_expr_ok(item) if kind == "expr" else
                  re.fullmatch('"\0*"', item) is not None if kind == "string" else
                  re.fullmatch(_NAME, item, re.A) is not None)
            if not ok:
                raise self.error(f"malformed argument `{st.code[a:b]}` for `{name}`" if item
                                 else f"missing argument for `{name}`", st)

    def const(self, st: _Stmt, a: int, b: int) -> int:
        """Value of the constant expression st.code[a:b] (numbers and .equ
        names only: keystone sizes nothing from labels correctly -- `.fill`
        with a label-dependent count hangs, `.space 16 - (. - x)` emits
        nothing)."""
        code, mask = st.code[a:b].strip(), st.mask[a:b]
        value = _int_value(code)
        if value is None:
            names = _names(mask)
            if "." not in names and not any(nm in self.labels or nm in self.generated
                                             for nm in names):
                try:
                    out = _ks_asm("\n".join([*self.equ_lines, f".quad ({code})"]), 0)
                    value = _signed(int.from_bytes(out[-8:], "little")) if len(out) >= 8 else None
                except keystone.KsError:
                    value = None
        if value is None:
            raise self.error(f"`{code}` must be a constant here (numbers and .equ names, "
                             "no labels)", st)
        return value

    def fix_sizes(self, st: _Stmt) -> None:
        """Evaluate the size, count or alignment of .space/.fill/.rept/.balign
        and write it back as a number keystone cannot get wrong."""
        name = st.name
        items = _split_top(st.mask, len(name))
        vals = [self.const(st, a, b) for a, b in items[:2 if name == ".fill" else 1]]
        rest = [st.code[a:b] for a, b in items[len(vals):]]
        n = vals[0]
        if name in _ALIGN:
            align = 1 << n if _ALIGN[name] and 0 <= n < 64 else n
            if not 0 < align <= _MAX_BYTES or align & (align - 1):
                raise self.error(f"alignment {align:#x} must be a power of 2 up to "
                                 f"{_MAX_BYTES:#x}", st)
            # keystone aligns offsets from the start of the code, not addresses
            if self.base % align:
                raise self.error(f"alignment to {align:#x} needs a base address aligned to it "
                                 f"(base is {self.base:#x})", st)
            new = [f".balign {align:#x}", *rest]
        else:
            size = n * (vals[1] if len(vals) > 1 else 1)
            if n < 0 or len(vals) > 1 and not 0 <= vals[1] <= 8:
                raise self.error(f"negative or invalid size in `{name}`", st)
            if size > (1 << 20 if name == ".rept" else _MAX_BYTES):
                raise self.error(f"`{name}` of {size:#x} is too large", st)
            if name in (".space", ".skip", ".zero"):
                # keystone rejects `.space 0` and hangs on a negative `.zero`
                new = [f".space {n:#x}", *rest] if n else []
            else:
                new = [f"{name} {', '.join(f'{v:#x}' for v in vals)}", *rest]
        text = ", ".join(new)
        st.code, st.mask = text, text

    def rewrite_numrefs(self, st: _Stmt, numdefs: dict) -> tuple[str, str]:
        code, mask = st.code, st.mask
        if st.kind == "empty" or not _NUMREF_RE.search(mask):
            return code, mask
        out_c, out_m, last = [], [], 0
        for m in _NUMREF_RE.finditer(mask):
            num, way = m.group(1), m.group(2)
            defs = numdefs.get(num, [])
            idx = [d[0] for d in defs]
            if way == "b":
                k = bisect.bisect_right(idx, st.index) - 1
                if k < 0:
                    raise self.error(f"no local label {num} before this line (for `{num}b`)", st)
            else:
                k = bisect.bisect_right(idx, st.index)
                if k >= len(defs):
                    raise self.error(f"no local label {num} after this line (for `{num}f`)", st)
            gen = defs[k][1]
            out_c += [code[last:m.start()], gen]
            out_m += [mask[last:m.start()], gen]
            last = m.end()
        out_c.append(code[last:])
        out_m.append(mask[last:])
        return "".join(out_c), "".join(out_m)

    # -- analysis: what depends on symbols ------------------------------------

    def analyze(self) -> None:
        self._known = set(self.labels) | self.generated | self.equs
        self.equ_lines = [st.code for st in self.stmts if not st.in_block
                          and (st.kind == "assign" or st.name in _EQU)]
        for st in self.stmts:
            if st.name in _SIZED and not (st.in_block and "\\" in st.code):
                self.fix_sizes(st)
            if st.in_block:
                if st.name == ".byte" and self.symbolic(st.mask[len(st.name):]):
                    # keystone loops forever on `.byte label`; outside blocks
                    # the value is computed here, inside it cannot be
                    raise self.error("`.byte` with a symbol is not supported inside a block", st)
                continue
            if st.kind == "insn":
                if st.name in self.macros:
                    st.kind = "block"   # a macro call expands to anything: verbatim
                    continue
                self.analyze_insn(st)
            elif st.kind == "data":
                self.analyze_data(st)
            elif st.kind == "assign" or st.name in _EQU:
                # keystone accepts `.equ A, nowhere` and only fails at a use
                # of A, which would put the blame on the wrong line
                expr = st.mask.split("=", 1)[1] if st.kind == "assign" else \
                    st.mask[len(st.name):].partition(",")[2]
                for nm in _names(expr):
                    if nm != "." and nm not in self._known:
                        raise self.error(f"undefined symbol `{nm}`", st)
        # each literal goes to the next .ltorg/.pool, or to the end of the code
        pending: list[tuple] = []
        for st in self.stmts:
            if st.lit and not st.in_block:
                pending.append(st.lit)
            elif st.kind == "pool" and not st.in_block:
                st.lits, pending = pending, []
        self.final_lits = pending

    def pool_text(self, lits: list[tuple], val: list[int] | None) -> list[str]:
        """Lines of a literal pool; val None gives the layout-pass zeros."""
        if not lits:
            return []
        out = [".balign 8" if self.base % 8 == 0 else ".balign 4"]
        for st, label, width, slot in sorted(lits, key=lambda lit: -lit[2]):
            v = 0 if val is None else val[slot]
            if width == 4 and not (v < 1 << 32 or -(1 << 31) <= _signed(v) < 0):
                raise self.error(f"value {_signed(v):#x} does not fit in a 32-bit register", st)
            directive = ".quad" if width == 8 else ".word"
            out.append(f"{label}: {directive} {v & ((1 << (8 * width)) - 1):#x}")
        return out

    def analyze_insn(self, st: _Stmt) -> None:
        mask, code = st.mask, st.code
        start = len(_MNEMONIC_RE.match(mask).group(0))
        ops = _split_top(mask, start)
        skip: list[tuple[int, int]] = []
        # PC-relative target
        spec = _PCREL.get(st.name) or (_BCOND if _BCOND_RE.fullmatch(st.name) else None)
        if spec and len(ops) == spec[0] + 1:
            a, b = ops[spec[0]]
            t_mask = mask[a:b]
            literal_form = st.name not in ("ldr", "ldrsw", "prfm") or t_mask[:1] not in "[="
            if literal_form and not _REGISTER_RE.fullmatch(t_mask) and ":" not in t_mask:
                skip.append((a, b))
                if t_mask.startswith("#"):
                    a += 1
                slot = self.add_slot(st, code[a:b], mask[a:b])
                st.target = (slot, st.name, spec[1], spec[2])
                st.edits.append((a, b, slot, "page" if st.name == "adrp" else "target"))
        if st.name == "ldr" and len(ops) == 2 and mask[ops[1][0]:ops[1][1]].startswith("="):
            # Literal pools are built here, not by keystone: its pool loads
            # abort the process when the pool ends up more than 2 MiB away
            # and silently wrap between 1 and 2 MiB. This one is an ordinary
            # PC-relative `ldr` to a generated label, checked like the others.
            a, b = ops[1]
            reg = mask[ops[0][0]:ops[0][1]].lower()
            width = 8 if reg[:1] in ("x", "d") else 4 if reg[:1] in ("w", "s") else 0
            if not width or not _REGISTER_RE.fullmatch(reg) or reg in ("wsp", "sp"):
                raise self.error("`ldr Rt, =value` needs an x, w, d or s register", st)
            slot = self.add_slot(st, code[a + 1:b], mask[a + 1:b])
            label = f"{_RESERVED}l{slot}"
            self.slots.append(label)
            st.lit = (st, label, width, slot)
            st.target = (len(self.slots) - 1, "ldr", 1 << 20, True)
            st.edits.append((a, b, len(self.slots) - 1, "target"))
            skip.append((a, b))
        # relocation specifiers: keystone aborts on :lo12: above 4 KiB and on
        # :abs_gN:, so they are computed here
        for m in _RELOC_RE.finditer(mask):
            if any(a <= m.start() < b for a, b in skip):
                continue
            kind = m.group(1).lower()
            if kind not in _RELOC_SHIFT:
                raise self.error(f"relocation specifier `:{m.group(1)}:` is not supported", st)
            end = _expr_end(mask, m.end())
            slot = self.add_slot(st, code[m.end():end], mask[m.end():end])
            st.edits.append((m.start(), end, slot, kind))
            skip.append((m.start(), end))
        # `#expr` immediates that use symbols are computed here too
        for m in re.finditer("#", mask):
            p = m.start()
            if any(a <= p < b for a, b in skip):
                continue
            end = _expr_end(mask, p + 1)
            # after `#` every name is a symbol (keystone reports an unknown
            # one as a bare "invalid operand")
            for nm in _names(mask[p + 1:end]):
                if nm != "." and nm not in self._known:
                    raise self.error(f"undefined symbol `{nm}`", st)
            if self.symbolic(mask[p + 1:end]):
                slot = self.add_slot(st, code[p + 1:end], mask[p + 1:end])
                st.edits.append((p, end, slot, "imm"))
                skip.append((p, end))
        st.symbolic = bool(st.edits) or self.symbolic(mask[start:])

    def analyze_data(self, st: _Stmt) -> None:
        items = _split_top(st.mask, len(st.name))
        st.nelems = len(items)
        # in data every name is a symbol; an unknown one must not reach
        # keystone (`.byte nowhere` kills the process)
        for a, b in items:
            for nm in _names(st.mask[a:b]):
                if nm != "." and nm not in self._known:
                    raise self.error(f"undefined symbol `{nm}`", st)
        if any(self.symbolic(st.mask[a:b]) for a, b in items):
            for a, b in items:
                slot = self.add_slot(st, st.code[a:b], st.mask[a:b])
                st.edits.append((a, b, slot, "data"))

    # -- the two passes -------------------------------------------------------

    def build(self, pass_no: int) -> tuple[str, list[str]]:
        """Source for one pass and the names/expressions of its table."""
        out: list[str] = []
        for st in self.stmts:
            body = st.body1 if pass_no == 1 else st.body2
            labels = "".join(f"{nm}: " for nm in st.labels)
            if st.in_block:
                out.append(labels + body)
            else:
                out.append(f"{self.slabel(st.index)}: {labels}{body}")
        table = [self.slabel(st.index) for st in self.stmts if not st.in_block]
        table += self.table_labels
        table += [f"{_RESERVED}pool", f"{_RESERVED}end", f"{_RESERVED}tab"]
        if pass_no == 1:
            table += [f"({e})" for e in self.slots]
        out.append(f"{_RESERVED}pool:")
        out += self.pool_text(self.final_lits, None if pass_no == 1 else self._val)
        # keystone puts its own pool (from `ldr =` in .rept/.macro blocks) at
        # the very end of the output, after anything appended: flush it here
        # so the table stays last
        out.append(".ltorg")
        out.append(f"{_RESERVED}end: .balign 8")
        out.append(f"{_RESERVED}tab:")
        for k in range(0, len(table), 16):
            out.append(".quad " + ", ".join(table[k:k + 16]))
        return "\n".join(out) + "\n", table

    def run(self, pass_no: int) -> tuple[bytes, list[int]]:
        text, table = self.build(pass_no)
        try:
            out = _ks_asm(text, self.base)
        except keystone.KsError as err:
            raise self.diagnose(pass_no, err) from None
        size = 8 * len(table)
        if len(out) < size:
            raise self.diagnose(pass_no, None)
        values = list(struct.unpack(f"<{len(table)}Q", out[len(out) - size:]))
        tab_addr = values[self.n_out + len(self.table_labels) + 2]
        if tab_addr != self.base + len(out) - size:
            # keystone stopped or skipped part of the source without an error
            raise self.diagnose(pass_no, None)
        return out, values

    def stmts_out(self) -> list[_Stmt]:
        """Statements outside blocks: the ones with their own address."""
        return [st for st in self.stmts if not st.in_block]

    def layout_bodies(self) -> None:
        for st in self.stmts:
            if st.kind == "empty":
                st.body1 = st.body2 = ""
            elif st.kind == "insn" and st.symbolic:
                st.body1 = ".word 0"     # same size, no fixups for keystone to botch
            elif st.kind == "pool" and not st.in_block:
                st.body1 = "\n".join([st.code, *self.pool_text(st.lits, None)])
            elif st.kind == "data" and st.edits:
                st.body1 = st.name + " " + ", ".join("0" for _ in st.edits)
            else:
                st.body1 = st.code
            st.body2 = st.code

    def code_bodies(self, values: list[int], addr: dict[int, int]) -> None:
        off = self.n_out + len(self.table_labels) + 3
        val = [values[off + k] for k in range(len(self.slots))]
        self._val = val
        for st in self.stmts:
            if st.kind == "pool" and not st.in_block:
                st.body2 = "\n".join([st.code, *self.pool_text(st.lits, val)])
            if not st.edits:
                continue
            pieces, last = [], 0
            for a, b, slot, how in sorted(st.edits):
                pieces += [st.code[last:a], self.render(st, val[slot], how, addr[st.index], a, b)]
                last = b
            pieces.append(st.code[last:])
            st.body2 = "".join(pieces)
            if st.target and st.name == "adrp":
                # keystone encodes `adrp x0, label` as the absolute page number,
                # and numeric targets against a PC that ignores alignment
                # padding; alone at its real address the numeric form is right
                pc = addr[st.index]
                try:
                    word = _ks_asm(st.body2, pc)
                except keystone.KsError as err:
                    raise self.error(_ks_reason(err, st), st) from None
                if len(word) != 4:
                    raise self.error(f"keystone emitted {len(word)} bytes for one instruction", st)
                st.body2 = f".word {int.from_bytes(word, 'little'):#010x}"

    def render(self, st: _Stmt, v: int, how: str, pc: int, a: int, b: int) -> str:
        """Text replacing st.code[a:b], whose expression has value v."""
        if how == "page":
            self.check_reach(st, v, pc)
            return f"{v & ~0xfff:#x}"
        if how == "target":
            # Written relative to this statement's own label: keystone encodes
            # a numeric target against a PC computed before alignment padding
            # is laid out (wrong after any .balign), and refuses numeric adr
            # targets; label fixups are resolved after layout. Range and
            # alignment are checked first because a failing fixup aborts the
            # process ("LLVM ERROR: fixup value out of range").
            self.check_reach(st, v, pc)
            d = _signed((v - pc) & ((1 << 64) - 1))
            return f"{self.slabel(st.index)} {'-' if d < 0 else '+'} {abs(d):#x}"
        if how == "imm":
            s = _signed(v)
            return f"#-{-s:#x}" if s < 0 else f"#{s:#x}"
        if how == "data":
            bits = 8 * st.width
            s = _signed(v)
            if st.width < 8 and not (0 <= v < 1 << bits or -(1 << (bits - 1)) <= s < 0):
                raise self.error(f"value {s:#x} does not fit in {st.name}", st)
            return f"{v & ((1 << bits) - 1):#x}"
        shift = _RELOC_SHIFT[how]
        if shift is None:                                  # :lo12:
            return f"#{v & 0xfff:#x}"
        if not how.endswith("_nc") and how != "abs_g3" and v >> (shift + 16):
            raise self.error(f"value {v:#x} does not fit in :{how}:", st)
        part = (v >> shift) & 0xffff
        return f"#{part:#x}" + (f", lsl #{shift}" if shift else "")

    def check_reach(self, st: _Stmt, target: int, pc: int) -> None:
        _slot, mnem, reach, aligned = st.target
        """Range/alignment check for a PC-relative operand (keystone would
        abort the process, or silently encode a wrong offset)."""
        _slot, mnem, reach, aligned = st.target
        if mnem == "adrp":
            dist = ((target >> 12) - (pc >> 12)) << 12
        else:
            dist = _signed((target - pc) & ((1 << 64) - 1))
            if aligned and dist % 4:
                raise self.error(f"`{mnem}` target {target:#x} is not a multiple of 4", st)
        if not -reach <= dist < reach:
            size = f"{reach >> 30} GiB" if reach >= 1 << 30 else (
                f"{reach >> 20} MiB" if reach >= 1 << 20 else f"{reach >> 10} KiB")
            if st.lit:
                raise self.error(f"literal pool out of reach: it is {dist:+#x} bytes away, `ldr =` "
                                 f"reaches ±{size}; put a `.ltorg` closer after this line", st)
            raise self.error(f"`{mnem}` cannot reach {target:#x} from {pc:#x} "
                             f"(offset {dist:+#x}, limit ±{size})", st)

    # -- error location -------------------------------------------------------

    def diagnose(self, pass_no: int, err: keystone.KsError | None) -> AsmError:
        """Keystone failed (or silently dropped code) somewhere: assemble each
        statement alone, all labels defined, and blame the first that fails."""
        # a unit: (statement, its lines, labels it defines itself); labels of
        # ordinary statements are defined in the context instead
        units: list[tuple[_Stmt, list[str], list[str]]] = []
        for st in self.stmts:
            if st.in_block:
                # a whole .rept/.macro/.if block is one unit
                units[-1][1].append("".join(f"{nm}: " for nm in st.labels) + st.code)
                units[-1][2].extend(st.labels)
                continue
            body = st.body1 if pass_no == 1 else st.body2
            lines = [body]
            if pass_no == 1:
                lines += [f".quad ({e})" for e in st.exprs]
            units.append((st, lines, []))
        addr = getattr(self, "addr1", {})
        equs = [st.code for st in self.stmts if not st.in_block
                and (st.kind == "assign" or st.name in _EQU)]
        macros = {id(st): "\n".join(lines) for st, lines, _own in units if st.name == ".macro"}
        for st, lines, own in units:
            if not any(x.strip() for x in lines):
                continue
            base = addr.get(st.index, self.base) if pass_no == 2 else self.base
            ctx = [e for e in equs if e != st.code]
            ctx += [m for key, m in macros.items() if key != id(st)]
            problem = self.probe(st, "\n".join(lines), own, ctx, base)
            if problem:
                return self.error(problem, st)
        if err is not None:
            return AsmError(_ks_reason(err) + " (keystone did not say where)")
        return AsmError("keystone produced incomplete output (it did not say why)")

    def probe(self, st: _Stmt, unit: str, own: list[str], defs: list[str],
              base: int, extra: tuple[str, ...] = ()) -> str | None:
        """None if unit assembles alone (all labels defined at its own
        address, plus the .equ lines and macros in defs), else the reason."""
        own_set = set(own)
        names = [nm for nm in (*self.labels, *self.generated) if nm not in own_set]
        ctx = [f"{nm}:" for nm in (*names, *extra, self.slabel(st.index))]
        ctx += defs
        marker = "\n.ltorg\n.word 0x1badb002\n"
        try:
            out = _ks_asm("\n".join(ctx) + "\n" + unit + marker, base)
        except keystone.KsError as e:
            reason = _ks_reason(e, st)
            if e.errno == keystone.KS_ERR_ASM_SYMBOL_MISSING and not extra:
                known = self._known
                mask = st.mask if st.kind != "block" else unit
                for nm in dict.fromkeys(_names(mask)):
                    if nm != "." and nm not in known and not self.probe(
                            st, unit, own, defs, base, (nm,)):
                        return f"undefined symbol `{nm}`"
            return reason
        if not out.endswith(b"\x02\xb0\xad\x1b"):
            return "keystone silently ignored this statement and everything after it"
        return None

    # -- the whole thing ------------------------------------------------------

    def assemble(self, source: str) -> Program:
        self.parse(source)
        if not any(st.kind in ("insn", "block") or st.inst for st in self.stmts):
            raise AsmError("empty program: the source contains no instructions")
        self.analyze()
        self.layout_bodies()
        outs = self.stmts_out()
        self.n_out = len(outs)
        _out1, values1 = self.run(1)
        self.addr1 = {st.index: values1[k] for k, st in enumerate(outs)}
        for st in outs:
            # GNU as rejects this too; keystone aborts on a branch from there
            if st.kind == "insn" and self.addr1[st.index] % 4:
                raise self.error(f"instruction at {self.addr1[st.index]:#x}, not a multiple "
                                 "of 4: add `.balign 4` after the data before it", st)
        self.code_bodies(values1, self.addr1)
        out2, values2 = self.run(2)
        addr2 = {st.index: values2[k] for k, st in enumerate(outs)}
        nl = len(outs) + len(self.table_labels)
        pool_addr, end_addr = values2[nl], values2[nl + 1]
        code = out2[:end_addr - self.base]
        if not code:
            raise AsmError("empty program: the source assembles to no bytes")
        self.verify(code, outs, addr2, pool_addr)
        symbols = {nm: values2[len(outs) + k] for k, nm in enumerate(self.table_labels)}
        lines: dict[int, tuple[int, str]] = {}
        bounds = [addr2[st.index] for st in outs] + [pool_addr]
        for k, st in enumerate(outs):
            if bounds[k + 1] > bounds[k] and st.kind != "empty":
                lines[bounds[k]] = (st.line, self.src_lines[st.line - 1].strip())
        return Program(self.base, bytes(code), symbols, lines)

    def verify(self, code: bytes, outs: list[_Stmt], addr: dict[int, int],
               pool_addr: int) -> None:
        """Catch what keystone gets wrong without saying so."""
        bounds = [addr[st.index] for st in outs] + [pool_addr]
        for k, st in enumerate(outs):
            if addr[st.index] != self.addr1[st.index]:
                raise InvariantError(f"asm: line {st.line} moved between passes "
                                     f"({self.addr1[st.index]:#x} -> {addr[st.index]:#x})")
            size = bounds[k + 1] - bounds[k]
            if st.kind == "insn" and size != 4:
                raise self.error(f"keystone emitted {size} bytes for one instruction", st)
            if st.kind == "data" and size != st.width * st.nelems:
                raise self.error(f"value out of range for `{st.name}` (keystone dropped "
                                 f"{st.width * st.nelems - size} of {st.width * st.nelems} bytes)",
                                 st)
            if st.target is None:
                continue
            pc = addr[st.index]
            word = code[pc - self.base:pc - self.base + 4]
            text = disassemble_one(word, pc)
            m = re.search(r"#(-?0x[0-9a-f]+|-?\d+)$", text)
            got = int(m.group(1), 0) if m else None
            want = self._val[st.target[0]]
            if st.name == "adrp":
                want &= ~0xfff
            if got != want:
                raise self.error(f"keystone mis-encoded this instruction: it reaches "
                                 f"{got if got is None else hex(got)}, not {want:#x}", st)


def assemble(source: str, base: int) -> Program:
    """Assemble GNU-as style AArch64 ``source`` so that it runs at ``base``.

    Raises AsmError (with line number and text) for anything that does not
    assemble, TypeError for a non-str source, ParameterError for a bad base.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be str, not {type(source).__name__}")
    if not isinstance(base, int) or isinstance(base, bool):
        raise TypeError(f"base must be int, not {type(base).__name__}")
    if not 0 <= base < 1 << 64 or base % 4:
        raise ParameterError(f"base {base:#x} must be a 4-byte aligned 64-bit address")
    if "\0" in source:
        raise AsmError("source contains a NUL character")
    job = _Assembly(source, base)
    return job.assemble(source)
