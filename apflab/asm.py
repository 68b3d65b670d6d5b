"""Assembler front end: GNU-as style AArch64 source -> bytes, symbols, line map.

Keystone does the encoding and capstone the decoding. Keystone alone is not
enough for student code: it has no GNU numeric local labels (``1:`` / ``1b``),
reports no line numbers and no symbols, and mishandles common constructs --
some silently (wrong ``adrp``, wrong numeric branch targets after a
``.balign``, dropped ``.inst``, out-of-range ``.word`` and bad operands), some
by killing or hanging the whole Python process (segfault on ``.text``,
``LLVM ERROR`` exit on an out-of-range or misaligned branch, endless loops on
``.byte label``, ``.quad ,``, ``.word 0x-4``, ``.equ E-4, 1`` and more, most
found by fuzzing). So this module has its own front end and never hands
keystone anything it has not checked:

* comments, statements, labels and GNU numeric local labels are handled here;
  ``.rept``/``.irp``/``.irpc``/``.if``/``.macro`` are expanded here too, so
  every statement keystone sees is a plain one that can be checked;
* directive arguments, expressions and numbers are syntax-checked first, and
  sizes, counts and alignments must be constants;
* keystone runs twice. The *layout pass* replaces every instruction that uses
  a symbol with a 4-byte placeholder and every symbolic data value with 0,
  and appends a ``.quad`` table that reads back the address of every
  statement and label and the value of every symbolic expression. Those
  values are then checked in Python (branch reach and alignment, data widths)
  and written into the *code pass*: data and immediates as numbers, branch
  targets as ``<statement label> +- offset`` (a form keystone gets right),
  ``adrp`` pre-encoded, literal pools (``ldr x0, =value``) built here;
* the result is checked against the layout (every instruction 4 bytes, every
  data directive its declared size, every PC-relative instruction decoding to
  its intended target). When keystone fails, statements are assembled one by
  one, all labels defined, and the first that fails is blamed.

GNU as is the reference: like it, an instruction after odd-sized data is
padded to a multiple of 4 (labels stay before the padding), and `.` in a data
list is the address of that element; tests compare bytes with GNU as + ld.

Limits: one flat section (``.text``, ``.data``, ``.section`` ... are accepted
and ignored); ``ldr x0, =value`` always uses a literal, never ``mov``; sizes
(``.space``, ``.fill``, ``.balign``, ``.rept``) cannot depend on labels.
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
    """An assembled guest program, ready to be copied to ``base``.

    ``lines`` maps the address where each statement's bytes start to its
    1-based source line number and text (macro and ``.rept`` expansions map
    to the line in the body).
    """

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
# `v0.16b` are not names); a lone `.` is the location counter
_IDENT_RE = re.compile(rf"(?<![\w.$\\])({_NAME})", re.A)
# GNU numeric local label reference: 1b / 2f, but not 0x1b, v0.16b, x1, b1
_NUMREF_RE = re.compile(r"(?<![\w.$\\])(\d+)([bf])(?![\w.$])", re.A)
# a token starting with a digit (exponent signs included), and the forms of it
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
_MACRO_ARG_RE = re.compile(r"\\(\(\)|@|[A-Za-z_]\w*)", re.A)

_RESERVED = ".L__apf_"
_NUL = "\0"              # replaces string contents in the scanning mask
_MAX_BYTES = 1 << 28     # .space/.fill/.balign beyond this: refused
_MAX_STATEMENTS = 200_000   # after expanding .rept/.irp/macros
_MAX_NESTING = 64

# PC-relative instructions: which operand is the target, reach in bytes
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
_POOL = {".ltorg", ".pool"}
_EQU = {".equ", ".set", ".equiv"}
# Argument shapes of the directives passed on to keystone; any other is
# refused, since keystone's directive parser hangs on malformed arguments
# such as `.quad ,`, `.byte 1,,2` or `.word 1)`.
# name -> (min items, max items or None, what an item is)
_ARGS = {
    **{d: (0, None, "expr") for d in (*_DATA_WIDTH, ".float", ".single", ".double")},
    **{d: (1, 2, "expr") for d in (".space", ".skip", ".zero")},
    **{d: (1, 3, "expr") for d in (".fill", *_ALIGN)},
    **{d: (0, 0, "") for d in (*_POOL, ".end")},
    **{d: (0, None, "string") for d in (".ascii", ".asciz", ".string")},
    **{d: (2, 2, "equ") for d in _EQU},
}
_SIZED = {".space", ".skip", ".zero", ".fill", *_ALIGN}
# block directives, expanded here: opener -> closer
_BLOCKS = {".rept": ".endr", ".irp": ".endr", ".irpc": ".endr", ".macro": ".endm"}
_IF_TESTS = {".if": lambda v: v != 0, ".ifne": lambda v: v != 0, ".ifeq": lambda v: v == 0,
             ".ifge": lambda v: v >= 0, ".ifgt": lambda v: v > 0, ".ifle": lambda v: v <= 0,
             ".iflt": lambda v: v < 0}
_IF_OTHER = {".ifdef", ".ifndef", ".ifnotdef", ".ifc", ".ifnc", ".ifb", ".ifnb"}
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
    if code in _KS_REASON:
        reason = _KS_REASON[code]
    elif code > keystone.KS_ERR_ASM_MNEMONICFAIL:
        reason = "invalid operand (immediate out of range, or wrong kind of operand)"
    else:
        reason = re.sub(r"\s*\(KS_ERR_\w+\)$", "", str(err)).lower() or "error"
    if code == keystone.KS_ERR_ASM_MNEMONICFAIL and stmt is not None and stmt.name:
        reason += f" `{stmt.name}`"
    return reason


def _split_top(mask: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Spans of the comma-separated items of mask[start:end], commas inside
    (), [] or {} not counted; no items if it is blank."""
    end = len(mask) if end is None else end
    if not mask[start:end].strip():
        return []
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


def _bad_number(mask: str, floats: bool) -> str | None:
    """A number token of mask that keystone could choke on, with the reason."""
    for m in _NUMTOK_RE.finditer(mask):
        tok = m.group(0)
        value = _int_value(tok)
        if value is not None:
            if value >= 1 << 64:        # `.quad 0x10000000000000000` crashes keystone
                return f"number {tok} does not fit in 64 bits"
        elif not (floats and _FLOAT_RE.fullmatch(tok)):
            return f"malformed number `{tok}`"
    return None


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


def _label_end(mask: str) -> int:
    """Where the `name:` labels in front of a statement end."""
    pos = 0
    while (m := _LABEL_RE.match(mask, pos)):
        pos = m.end()
    return pos


def _head(mask: str) -> tuple[int, str, int]:
    """(end of labels, lower-case directive or mnemonic, end of it) of a statement."""
    pos = _label_end(mask)
    m = _DIRECTIVE_RE.match(mask, pos) or _MNEMONIC_RE.match(mask, pos)
    return pos, (m.group(1).lower() if m else ""), (m.end() if m else pos)


def _equ_parts(mask: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Spans of name and value of an `.equ/.set/.equiv NAME, value` or
    `NAME = value` statement (labels already removed), else None."""
    d = _DIRECTIVE_RE.match(mask)
    if d and d.group(1).lower() in _EQU:
        items = _split_top(mask, d.end())
        return (items[0], items[1]) if len(items) == 2 else ((0, 0), (0, 0))
    m = _ASSIGN_RE.match(mask)
    if m and not mask.lstrip().startswith("."):
        return (m.start(1), m.end(1)), _trim(mask, m.end(), len(mask))
    return None


# ---------------------------------------------------------------------------
# lexing

# a raw statement: (line, code, mask, via) -- via says which .rept/macro
# expansion it comes from, for messages
_Raw = tuple[int, str, str, str]


def _lex(source: str, src_lines: list[str], via: str = "") -> list[_Raw]:
    """Split source into raw statements: strips comments, splits on newlines
    and `;` (a statement separator in GNU as for AArch64, not a comment),
    keeps string and character literals intact (blanked in the mask)."""
    out: list[_Raw] = []
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
            out.append((start[0], text, "".join(mask), via))
        code.clear()
        mask.clear()
        start[0] = 0

    def fail(msg: str, line: int) -> AsmError:
        return AsmError(msg + via, line, src_lines[line - 1].strip())

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
                if source[j] == "\n" or source.startswith("\\\n", j):
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


# ---------------------------------------------------------------------------
# statements

@dataclass
class _Stmt:
    index: int
    line: int
    code: str                      # comment-free text, labels removed
    mask: str                      # same, string/char contents blanked
    via: str = ""                  # " (in macro `m` used on line 9)" etc.
    labels: list[str] = field(default_factory=list)
    kind: str = "empty"            # empty insn data align pool assign directive
    name: str = ""                 # mnemonic or directive, lower case
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


@dataclass
class _Macro:
    name: str
    params: list[tuple[str, str, str]]     # (name, default, qualifier)
    body: list[_Raw]
    line: int


class _ExitMacro(Exception):
    """`.exitm` reached while expanding a macro."""


class _Assembly:
    """One run of assemble(): expand, parse, layout pass, checks, code pass, verify."""

    def __init__(self, source: str, base: int):
        self.base = base
        self.src_lines = source.split("\n")
        self.stmts: list[_Stmt] = []
        self.labels: dict[str, int] = {}      # user label -> line
        self.equs: set[str] = set()
        self.generated: set[str] = set()      # numeric local label names
        self.slots: list[str] = []            # expression table entries
        self.final_lits: list[tuple] = []     # literals of the pool at the end
        # expansion state
        self.macros: dict[str, _Macro] = {}
        self.macro_count = 0                  # for \@
        self.macro_depth = 0
        self.ended = False
        self.seen: set[str] = set()           # labels and .equ names so far (for .ifdef)
        # (statement index, name, text, value) of each .equ/.set/= so far
        self.equ_lines: list[tuple[int, str, str, str]] = []

    # -- helpers ------------------------------------------------------------

    def error(self, msg: str, stmt: _Stmt | _Raw | None) -> AsmError:
        if stmt is None:
            return AsmError(msg)
        line, via = (stmt.line, stmt.via) if isinstance(stmt, _Stmt) else (stmt[0], stmt[3])
        return AsmError(msg + via, line, self.src_lines[line - 1].strip())

    @staticmethod
    def slabel(i: int) -> str:
        return f"{_RESERVED}s{i}"

    def add_slot(self, stmt: _Stmt, code: str, mask: str, dot: int = 0) -> int:
        """Register expression code (mask: its scanning mask) for the table,
        with `.` meaning this statement's address (+ dot); check it first."""
        for nm in _names(mask):
            if nm != "." and nm not in self.known:
                raise self.error(f"undefined symbol `{nm}`", stmt)
        if not code.strip():
            raise self.error("missing expression", stmt)
        if not _expr_ok(mask):
            # keystone's .quad parser can loop forever on these (`.quad (x-)`)
            raise self.error(f"malformed expression `{code.strip()}`", stmt)
        here = f"({self.slabel(stmt.index)} + {dot})" if dot else self.slabel(stmt.index)
        parts, last = [], 0
        for m in re.finditer(r"(?<![\w.$])\.(?![\w.$])", mask):
            parts += [code[last:m.start()], here]
            last = m.end()
        parts.append(code[last:])
        expr = "".join(parts).strip()
        self.slots.append(expr)
        stmt.exprs.append(expr)
        return len(self.slots) - 1

    def symbolic(self, mask: str) -> bool:
        """Does mask use any symbol (label, .equ name or `.`)?"""
        return any(nm == "." or nm in self.known for nm in _names(mask))

    def label_dependent(self, mask: str) -> bool:
        """Does mask's value depend on an address (directly or via .equ)?
        Only those are computed from the table, which holds each .equ name's
        final value; keystone evaluates the rest in place, honouring `.set`
        redefinitions."""
        _lines, names = self.equ_deps(_names(mask))
        return "." in names or any(nm in self.labels or nm in self.generated for nm in names)

    def constant(self, code: str, mask: str, where: _Stmt | _Raw) -> int:
        """Value of a constant expression: numbers and .equ names only
        (keystone sizes nothing from labels correctly -- `.fill` with a
        label-dependent count hangs, `.space 16 - (. - x)` emits nothing)."""
        code = code.strip()
        value = _int_value(code)
        if value is not None:
            return value
        if not _expr_ok(mask):
            raise self.error(f"malformed expression `{code}`", where)
        problem = _bad_number(mask, False)
        if problem:
            raise self.error(problem, where)
        names = _names(mask)
        if "." not in names and not any(nm in self.labels or nm in self.generated
                                         for nm in names):
            upto = where.index if isinstance(where, _Stmt) else None
            try:
                out = _ks_asm("\n".join([*self.equ_deps(names, upto)[0], f".quad ({code})"]), 0)
                if len(out) >= 8:
                    return _signed(int.from_bytes(out[-8:], "little"))
            except keystone.KsError:
                pass
        raise self.error(f"`{code}` must be a constant here (numbers and .equ names, "
                         "no labels)", where)

    def equ_deps(self, names: list[str], upto: int | None = None) -> tuple[list[str], set[str]]:
        """The .equ lines that names depend on (the latest definition of each
        before statement upto, in source order) and every name involved."""
        need, seen, lines = set(names), set(names), []
        for idx, name, text, value in reversed(self.equ_lines):
            if upto is not None and idx >= upto:
                continue
            if name in need:
                used = set(_names(value))
                if name not in used:            # `.set N, N + 1` needs the older N too
                    need.discard(name)
                need |= used - seen
                seen |= used
                lines.append(text)
        return lines[::-1], seen

    # -- expansion of .rept/.irp/.irpc/.if/.macro ------------------------------

    def expand(self, items: list[_Raw], out: list[_Raw]) -> None:
        """Append items to out with every block directive expanded."""
        i = 0
        while i < len(items) and not self.ended:
            raw = items[i]
            line, code, mask, via = raw
            pos, name, _end = _head(mask)
            labels = (line, code[:pos], mask[:pos], via)
            if name in _BLOCKS or name in _IF_TESTS or name in _IF_OTHER:
                end, parts = self.block_end(items, i)
                if pos:
                    self.emit(labels, out)      # labels in front of the block
                if name == ".macro":
                    self.define_macro(items[i], items[i + 1:end])
                elif name in _BLOCKS:
                    self.repeat(items[i], items[i + 1:end], out)
                else:
                    self.conditional(items, parts, end, out)
                i = end + 1
                continue
            if name in (".endr", ".endm", ".endif", ".else", ".elseif"):
                raise self.error(f"`{name}` without an open block", raw)
            if name == ".exitm":
                if not self.macro_depth:
                    raise self.error("`.exitm` outside a macro", raw)
                raise _ExitMacro
            if name == ".purgem":
                self.macros.pop(self.rest_of(raw)[0].strip().lower(), None)
            elif name in self.macros:
                if pos:
                    self.emit(labels, out)
                self.call_macro(self.macros[name], raw, pos, out)
            else:
                self.emit(raw, out)
                if name == ".end":
                    self.ended = True
            i += 1

    def emit(self, raw: _Raw, out: list[_Raw]) -> None:
        out.append(raw)
        if len(out) > _MAX_STATEMENTS:
            raise self.error(f"more than {_MAX_STATEMENTS} statements after expanding "
                             ".rept and macros", raw)
        # keep track of names for .ifdef and of .equ lines for constants
        _line, code, mask, _via = raw
        pos = 0
        while (m := _LABEL_RE.match(mask, pos)):
            self.seen.add(m.group(1))
            pos = m.end()
        a, b = _trim(mask, pos, len(mask))
        parts = _equ_parts(mask[a:b])
        if parts:
            # checked now: keystone may evaluate it for a .rept count or .if,
            # and it hangs on a malformed name (`.equ E-4, 1`) or value
            (na, nb), (va, vb) = parts
            name, value = mask[a:b][na:nb], mask[a:b][va:vb]
            if not re.fullmatch(_NAME, name, re.A) or not _expr_ok(value) or \
                    _bad_number(value, False):
                raise self.error("expected `.equ NAME, value` or `NAME = value`", raw)
            self.seen.add(name)
            self.equ_lines.append((len(out) - 1, name, code[a:b], value))

    def block_end(self, items: list[_Raw], i: int) -> tuple[int, list[int]]:
        """Index of the statement closing the block opened at items[i], and
        the indexes of its .if/.elseif/.else parts."""
        stack: list[str] = []
        parts: list[int] = []
        for j in range(i, len(items)):
            _pos, name, _end = _head(items[j][2])
            if name in _BLOCKS:
                stack.append(_BLOCKS[name])
            elif name in _IF_TESTS or name in _IF_OTHER:
                stack.append(".endif")
            elif name in (".endr", ".endm", ".endif"):
                if stack.pop() != name:
                    raise self.error(f"`{name}` does not close the open block", items[j])
                if not stack:
                    return j, parts + [j]
            elif name in (".else", ".elseif") and len(stack) == 1 and stack[0] == ".endif":
                parts.append(j)
            if len(stack) > _MAX_NESTING:
                raise self.error("blocks nested too deeply", items[j])
            if j == i:
                parts.append(i)
        raise self.error(f"`{_head(items[i][2])[1]}` block is never closed", items[i])

    @staticmethod
    def rest_of(raw: _Raw) -> tuple[str, str]:
        """(code, mask) after a statement's labels and directive."""
        _pos, _name, end = _head(raw[2])
        return raw[1][end:], raw[2][end:]

    def args_of(self, raw: _Raw) -> list[tuple[str, str]]:
        """(code, mask) of the comma-separated arguments after the directive."""
        code, mask = self.rest_of(raw)
        return [(code[a:b], mask[a:b]) for a, b in _split_top(mask)]

    def repeat(self, head: _Raw, body: list[_Raw], out: list[_Raw]) -> None:
        """.rept n / .irp sym, values / .irpc sym, chars."""
        _pos, name, _end = _head(head[2])
        args = self.args_of(head)
        via = f" (in the {name} on line {head[0]})" + head[3]
        if name == ".rept":
            if len(args) != 1:
                raise self.error("expected `.rept count`", head)
            count = self.constant(*args[0], head)
            if not 0 <= count <= _MAX_STATEMENTS:
                raise self.error(f"`.rept` count {count} out of range", head)
            runs = [{}] * count
        else:
            if not args or not re.fullmatch(r"[A-Za-z_]\w*", args[0][0].strip(), re.A):
                raise self.error(f"expected `{name} symbol, values`", head)
            sym = args[0][0].strip()
            values = [a[0].strip() for a in args[1:]] or [""]
            if name == ".irpc":
                values = list(values[0]) or [""]
            runs = [{sym: v} for v in values]
        for subst in runs:
            self.expand([self.substitute(raw, subst, via) for raw in body], out)

    def conditional(self, items: list[_Raw], parts: list[int], end: int,
                    out: list[_Raw]) -> None:
        """Expand the first true part of an .if/.elseif/.else chain."""
        for k, start in enumerate(parts[:-1]):
            raw = items[start]
            _pos, name, _end = _head(raw[2])
            if name == ".else" or self.test(raw, name):
                self.expand(items[start + 1:parts[k + 1]], out)
                return

    def test(self, raw: _Raw, name: str) -> bool:
        args = self.args_of(raw)
        text = self.rest_of(raw)[0].strip()
        if name in _IF_TESTS or name == ".elseif":
            if len(args) != 1:
                raise self.error(f"expected `{name} expression`", raw)
            return _IF_TESTS.get(name, _IF_TESTS[".if"])(self.constant(*args[0], raw))
        if name in (".ifdef", ".ifndef", ".ifnotdef"):
            if not re.fullmatch(_NAME, text, re.A):
                raise self.error(f"expected `{name} symbol`", raw)
            return (text in self.seen) == (name == ".ifdef")
        if name in (".ifb", ".ifnb"):
            return (not text) == (name == ".ifb")
        if len(args) != 2:                                   # .ifc / .ifnc
            raise self.error(f"expected `{name} string1, string2`", raw)
        a, b = (s.strip().strip('"') for s, _m in args)
        return (a == b) == (name == ".ifc")

    def define_macro(self, head: _Raw, body: list[_Raw]) -> None:
        text = self.rest_of(head)[0].strip()
        m = re.match(r"([A-Za-z_.$][\w.$]*)\s*,?\s*(.*)$", text, re.A | re.S)
        if not m:
            raise self.error("expected `.macro name params`", head)
        name, rest = m.group(1).lower(), m.group(2).strip()
        if name in self.macros:
            raise self.error(f"macro `{name}` already defined on line "
                             f"{self.macros[name].line}", head)
        params = []
        for p in (rest.split(",") if "," in rest else rest.split()) if rest else []:
            pm = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(?::\s*(req|vararg))?\s*(?:=(.*))?",
                              p, re.A | re.S)
            if not pm:
                raise self.error(f"bad macro parameter `{p.strip()}`", head)
            params.append((pm.group(1), (pm.group(3) or "").strip(), pm.group(2) or ""))
        self.macros[name] = _Macro(name, params, body, head[0])

    def call_macro(self, macro: _Macro, raw: _Raw, pos: int, out: list[_Raw]) -> None:
        line, code, mask, via = raw
        args = [code[a:b] for a, b in _split_top(mask, _head(mask)[2])]
        if len(args) == 1 and len(macro.params) > 1 and " " in args[0].strip():
            args = args[0].split()                      # `m a b` works like `m a, b`
        values = {p: default for p, default, _q in macro.params}
        positional = 0
        for k, arg in enumerate(args):
            km = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=(?!=)(.*)", arg, re.A | re.S)
            if km and km.group(1) in values:
                values[km.group(1)] = km.group(2).strip()
                continue
            if positional >= len(macro.params):
                raise self.error(f"too many arguments for macro `{macro.name}`", raw)
            pname, _d, qual = macro.params[positional]
            if qual == "vararg":
                values[pname] = ", ".join(a.strip() for a in args[k:])
                break
            values[pname] = arg.strip()
            positional += 1
        for pname, _d, qual in macro.params:
            if qual == "req" and not values[pname]:
                raise self.error(f"macro `{macro.name}` needs a value for `{pname}`", raw)
        self.macro_count += 1
        values["@"] = str(self.macro_count - 1)
        if self.macro_depth >= _MAX_NESTING:
            raise self.error(f"macro `{macro.name}` nested too deeply", raw)
        note = f" (in macro `{macro.name}` used on line {line})" + via
        self.macro_depth += 1
        try:
            self.expand([self.substitute(r, values, note) for r in macro.body], out)
        except _ExitMacro:
            pass
        finally:
            self.macro_depth -= 1

    def substitute(self, raw: _Raw, values: dict[str, str], via: str) -> _Raw:
        """raw with \\name, \\@ and \\() replaced (also inside strings, as GNU does)."""
        line, code, mask, _via = raw
        if "\\" not in code:
            return (line, code, mask, via)

        def repl(m: re.Match) -> str:
            key = m.group(1)
            return "" if key == "()" else values.get(key, m.group(0))

        new = _MACRO_ARG_RE.sub(repl, code)
        if new == code:
            return (line, code, mask, via)
        try:
            lexed = _lex(new, [self.src_lines[line - 1]], via)
        except AsmError as e:
            raise self.error(e.message.removesuffix(via), raw) from None
        if len(lexed) > 1:
            raise self.error("a macro argument split this statement in two", raw)
        return (line, lexed[0][1], lexed[0][2], via) if lexed else (line, "", "", via)

    # -- parsing --------------------------------------------------------------

    def parse(self, source: str) -> None:
        raw: list[_Raw] = []
        self.expand(_lex(source, self.src_lines), raw)
        numdefs: dict[str, list[tuple[int, str]]] = {}
        for line, code, mask, via in raw:
            st = _Stmt(len(self.stmts), line, code, mask, via)
            # labels: `name:` (several allowed) before the statement proper
            pos = 0
            while (m := _LABEL_RE.match(mask, pos)):
                name = m.group(1)
                if name.isdigit():
                    defs = numdefs.setdefault(name, [])
                    gen = f"{_RESERVED}n{name}_{len(defs)}"
                    defs.append((st.index, gen))
                    self.generated.add(gen)
                    st.labels.append(gen)
                else:
                    self.define(name, st)
                    st.labels.append(name)
                pos = m.end()
            a, b = _trim(mask, pos, len(mask))     # by the mask: `' ` is a literal space
            st.code, st.mask = code[a:b], mask[a:b]
            body = st.mask
            if not body:
                st.kind = "empty"
            elif (m := _ASSIGN_RE.match(body)) and not body.startswith("."):
                st.kind = "assign"
                self.define_equ(m.group(1), st)
            elif body.startswith("."):
                st.name = _DIRECTIVE_RE.match(body).group(1).lower()
                self.directive(st)
            else:
                m = _MNEMONIC_RE.match(body)
                if not m or not body[:1].isalpha():
                    raise self.error("expected an instruction, a directive or a label", st)
                st.kind = "insn"
                st.name = m.group(1).lower()
            if st.name == ".end":
                st.kind, st.code, st.mask = "empty", "", ""
            self.stmts.append(st)
        # GNU numeric label references: nearest definition before/after
        for st in self.stmts:
            st.code, st.mask = self.rewrite_numrefs(st, numdefs)
        # malformed numbers hang keystone, huge ones crash it
        for st in self.stmts:
            problem = _bad_number(st.mask, st.kind in ("insn", "directive"))
            if problem:
                raise self.error(problem, st)

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

    def directive(self, st: _Stmt) -> None:
        """Classify a directive; drop or respell the ones keystone mishandles."""
        name = st.name
        if name in _UNSUPPORTED:
            raise self.error(_UNSUPPORTED[name], st)
        if name in _IGNORED or name.startswith(".cfi_"):
            st.kind, st.code, st.mask = "empty", "", ""
            return
        if name in _RENAMED:
            new = _RENAMED[name]
            st.code = new + st.code[len(name):]
            st.mask = new + st.mask[len(name):]
            st.inst = name == ".inst"
            st.name, name = new, new
        if name not in _ARGS:
            raise self.error(f"unknown or unsupported directive `{name}`", st)
        self.check_args(st)
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
                self.define_equ(_IDENT_RE.search(st.mask, len(name)).group(1), st)

    def check_args(self, st: _Stmt) -> None:
        """Check a directive's arguments before keystone sees them."""
        name = st.name
        lo, hi, kind = _ARGS[name]
        items = _split_top(st.mask, len(name))
        if kind == "equ":
            return      # checked when expanding (emit)
        if not lo <= len(items) <= (len(items) if hi is None else hi):
            want = ("no arguments" if hi == 0 else f"{lo} argument" + "s" * (lo != 1) if hi == lo
                    else f"{lo} to {hi} arguments" if hi else f"{lo} or more arguments")
            raise self.error(f"`{name}` takes {want}", st)
        for a, b in items:
            item = st.mask[a:b]
            ok = _expr_ok(item) if kind == "expr" else re.fullmatch('"\0*"', item) is not None
            if not ok:
                raise self.error(f"malformed argument `{st.code[a:b]}` for `{name}`" if item
                                 else f"missing argument for `{name}`", st)

    def fix_sizes(self, st: _Stmt) -> None:
        """Evaluate the size or alignment of .space/.fill/.balign and write it
        back as a number keystone cannot get wrong."""
        name = st.name
        items = _split_top(st.mask, len(name))
        vals = [self.constant(st.code[a:b], st.mask[a:b], st)
                for a, b in items[:2 if name == ".fill" else 1]]
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
            if n < 0 or len(vals) > 1 and not 0 <= vals[1] <= 8:
                raise self.error(f"negative or invalid size in `{name}`", st)
            if n * (vals[1] if len(vals) > 1 else 1) > _MAX_BYTES:
                raise self.error(f"`{name}` of more than {_MAX_BYTES:#x} bytes", st)
            if name == ".fill":
                new = [f".fill {', '.join(f'{v:#x}' for v in vals)}", *rest]
            else:
                # keystone rejects `.space 0` and hangs on a negative `.zero`
                new = [f".space {n:#x}", *rest] if n else []
        st.code = st.mask = ", ".join(new)

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
        self.known = set(self.labels) | self.generated | self.equs
        self.equ_lines = []
        for st in self.stmts:
            parts = _equ_parts(st.mask) if st.kind in ("assign", "directive") else None
            if parts:
                self.equ_lines.append((st.index, st.mask[slice(*parts[0])], st.code,
                                       st.mask[slice(*parts[1])]))
        for st in self.stmts:
            if st.name in _SIZED:
                self.fix_sizes(st)
            if st.kind == "insn":
                self.analyze_insn(st)
            elif st.kind == "data":
                self.analyze_data(st)
            elif st.kind == "assign" or st.name in _EQU:
                # keystone accepts `.equ A, nowhere` and only fails at a use
                # of A, which would put the blame on the wrong line
                expr = st.mask.split("=", 1)[1] if st.kind == "assign" else \
                    st.mask[len(st.name):].partition(",")[2]
                for nm in _names(expr):
                    if nm != "." and nm not in self.known:
                        raise self.error(f"undefined symbol `{nm}`", st)
        # each literal goes to the next .ltorg/.pool, or to the end of the code
        pending: list[tuple] = []
        for st in self.stmts:
            if st.lit:
                pending.append(st.lit)
            elif st.kind == "pool":
                st.lits, pending = pending, []
        self.final_lits = pending

    @staticmethod
    def pcrel_operand(st: _Stmt) -> tuple[int, int, tuple] | None:
        """Span of the target operand of a PC-relative instruction, and its
        (operand index, reach, aligned) spec; None if st has none."""
        mask = st.mask
        spec = _PCREL.get(st.name) or (_BCOND if _BCOND_RE.fullmatch(st.name) else None)
        if not spec:
            return None
        ops = _split_top(mask, len(_MNEMONIC_RE.match(mask).group(0)))
        if len(ops) != spec[0] + 1:
            return None
        a, b = ops[spec[0]]
        t_mask = mask[a:b]
        if not t_mask or st.name in ("ldr", "ldrsw", "prfm") and t_mask[:1] in ("[", "="):
            return None
        if _REGISTER_RE.fullmatch(t_mask) or ":" in t_mask:
            return None
        return a, b, spec

    def analyze_insn(self, st: _Stmt) -> None:
        mask, code = st.mask, st.code
        start = len(_MNEMONIC_RE.match(mask).group(0))
        # keystone reads `ldr x0[, =x` as `ldr x0, =x` and makes a literal
        # pool of its own for any `=value`: only well-formed ones go through
        depth = 0
        for c in mask[start:]:
            depth += (c in "([{") - (c in ")]}")
            if depth < 0:
                break
        if depth:
            raise self.error("unbalanced brackets", st)
        if "=" in mask[start:] and not (st.name == "ldr" and re.fullmatch(
                r"[^=]*,\s*=[^=].*", mask[start:], re.S)):
            raise self.error("`=value` operands only work with `ldr Rt, =value`", st)
        ops = _split_top(mask, start)
        skip: list[tuple[int, int]] = []
        # PC-relative target
        found = self.pcrel_operand(st)
        if found:
            a, b, spec = found
            skip.append((a, b))
            if mask[a:a + 1] == "#":
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
                if nm != "." and nm not in self.known:
                    raise self.error(f"undefined symbol `{nm}`", st)
            if self.label_dependent(mask[p + 1:end]):
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
                if nm != "." and nm not in self.known:
                    raise self.error(f"undefined symbol `{nm}`", st)
        if any(self.label_dependent(st.mask[a:b]) for a, b in items):
            for k, (a, b) in enumerate(items):
                # as in GNU as, `.` is the address of this very element
                slot = self.add_slot(st, st.code[a:b], st.mask[a:b], k * st.width)
                st.edits.append((a, b, slot, "data"))

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

    # -- the two passes -------------------------------------------------------

    def build(self, pass_no: int) -> tuple[str, list[str]]:
        """Source for one pass and the names/expressions of its table."""
        out: list[str] = []
        after_data = False
        for st in self.stmts:
            body = st.body1 if pass_no == 1 else st.body2
            labels = "".join(f"{nm}: " for nm in st.labels)
            if st.kind == "insn" and after_data:
                # like GNU as: an instruction after odd-sized data is padded
                # with zeros to a multiple of 4; its labels stay before that
                out += [labels, ".balign 4", f"{self.slabel(st.index)}: {body}"]
            else:
                out.append(f"{self.slabel(st.index)}: {labels}{body}")
            if st.kind != "empty":
                after_data = st.kind != "insn"
        table = [self.slabel(st.index) for st in self.stmts] + list(self.labels)
        table += [f"{_RESERVED}pool", f"{_RESERVED}end", f"{_RESERVED}tab"]
        if pass_no == 1:
            table += [f"({e})" for e in self.slots]
        out.append(f"{_RESERVED}pool:")
        out += self.pool_text(self.final_lits, None if pass_no == 1 else self.val)
        # keystone puts a pool of its own (should it make one) at the very end
        # of its output, after anything appended: flush it here, before the table
        out.append(".ltorg")
        out.append(f"{_RESERVED}end: .balign 8")
        out.append(f"{_RESERVED}tab:")
        for k in range(0, len(table), 16):
            out.append(".quad " + ", ".join(table[k:k + 16]))
        return "\n".join(out) + "\n", table

    def run(self, pass_no: int) -> list[int]:
        """One keystone pass; returns its output and the table values."""
        text, table = self.build(pass_no)
        try:
            out = _ks_asm(text, self.base)
        except keystone.KsError as err:
            raise self.diagnose(pass_no, err) from None
        size = 8 * len(table)
        if len(out) < size:
            raise self.diagnose(pass_no, None)
        values = list(struct.unpack(f"<{len(table)}Q", out[len(out) - size:]))
        if values[self.n_fixed - 1] != self.base + len(out) - size:
            # keystone stopped or skipped part of the source without an error
            raise self.diagnose(pass_no, None)
        self.out = out
        return values

    def layout_bodies(self) -> None:
        for st in self.stmts:
            if st.kind == "insn" and st.symbolic:
                st.body1 = ".word 0"     # same size, no fixups for keystone to botch
            elif st.kind == "pool":
                st.body1 = "\n".join([st.code, *self.pool_text(st.lits, None)])
            elif st.kind == "data" and st.edits:
                st.body1 = st.name + " " + ", ".join("0" for _ in st.edits)
            else:
                st.body1 = st.code
            st.body2 = st.code

    def code_bodies(self, values: list[int], addr: list[int]) -> None:
        self.val = val = values[self.n_fixed:]
        for st in self.stmts:
            if st.kind == "pool":
                st.body2 = "\n".join([st.code, *self.pool_text(st.lits, val)])
            if not st.edits:
                continue
            pieces, last = [], 0
            for a, b, slot, how in sorted(st.edits):
                # spaced: `.quad(x)` must not become `.quad0x10` (keystone hangs on it)
                pieces += [st.code[last:a], f" {self.render(st, val[slot], how, addr[st.index])} "]
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

    def render(self, st: _Stmt, v: int, how: str, pc: int) -> str:
        """Text for an edited span whose expression has value v."""
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
        for st in self.stmts:
            body = st.body1 if pass_no == 1 else st.body2
            lines = [f".quad ({e})" for e in st.exprs] if pass_no == 1 else []
            unit = "\n".join(lines + [body])
            if not unit.strip():
                continue
            base = self.addr1[st.index] if pass_no == 2 else self.base
            problem = self.probe(st, unit, base, min_bytes=4 if st.kind == "insn" else 0)
            if problem:
                return self.error(problem, st)
        # Every statement assembles alone: find the first prefix of the pass
        # that fails or loses its end marker (some statements make keystone
        # drop everything after them only in context).
        lines = self.build(pass_no)[0].split("\n")[:len(self.stmts)]

        def fails(k: int) -> str | None:
            later = [f"{nm}:" for nm in (*self.labels, *self.generated)
                     if not any(nm in st.labels for st in self.stmts[:k])]
            text = "\n".join([*lines[:k], ".ltorg", ".word 0x1badb002", *later])
            try:
                out = _ks_asm(text + "\n", self.base)
            except keystone.KsError as e:
                return _ks_reason(e, self.stmts[k - 1])
            if not out.endswith(b"\x02\xb0\xad\x1b"):
                return "keystone silently ignored this statement and everything after it"
            return None

        lo, hi = 0, len(self.stmts)        # fails(lo) is None; find the first k failing
        if fails(hi):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if fails(mid) else (mid, hi)
            return self.error(fails(hi), self.stmts[hi - 1])
        if err is not None:
            return AsmError(_ks_reason(err) + " (keystone did not say where)")
        return AsmError("keystone produced incomplete output (it did not say why)")

    def probe(self, st: _Stmt, unit: str, base: int, extra: tuple[str, ...] = (),
              min_bytes: int = 0) -> str | None:
        """None if unit assembles alone (all labels defined at its own
        address, and the .equ lines), else the reason."""
        # only what the unit uses: all labels at its own address, and the
        # .equ lines it depends on
        equs, used = self.equ_deps(_names(unit))
        names = [nm for nm in (*self.labels, *self.generated) if nm in used]
        names += [*extra, self.slabel(st.index)]
        head = "\n".join([f"{nm}:" for nm in names] + [e for e in equs if e != st.code])
        try:
            # keystone reports a bad expression only in the last statement
            # of its input (elsewhere it drops the statement and goes on)
            out = _ks_asm(f"{head}\n{unit}\n", base)
            marked = _ks_asm(f"{head}\n{unit}\n.ltorg\n.word 0x1badb002\n", base)
        except keystone.KsError as e:
            if e.errno == keystone.KS_ERR_ASM_SYMBOL_MISSING and not extra:
                for nm in dict.fromkeys(_names(st.mask)):
                    if nm != "." and nm not in self.known and not self.probe(
                            st, unit, base, (nm,)):
                        return f"undefined symbol `{nm}`"
            return _ks_reason(e, st)
        if len(out) < min_bytes:
            return "keystone silently ignored this statement (malformed operand?)"
        if not marked.endswith(b"\x02\xb0\xad\x1b"):
            return "keystone silently ignored this statement and everything after it"
        return None

    # -- the whole thing ------------------------------------------------------

    def assemble(self, source: str) -> Program:
        self.parse(source)
        if not any(st.kind == "insn" or st.inst for st in self.stmts):
            raise AsmError("empty program: the source contains no instructions")
        self.analyze()
        self.layout_bodies()
        n = len(self.stmts)
        self.n_fixed = n + len(self.labels) + 3       # table entries before the slots
        values1 = self.run(1)
        self.addr1 = values1[:n]
        for st in self.stmts:
            # GNU as rejects this too; keystone aborts on a branch from there
            if st.kind == "insn" and self.addr1[st.index] % 4:
                raise self.error(f"instruction at {self.addr1[st.index]:#x}, not a multiple "
                                 "of 4: add `.balign 4` after the data before it", st)
        self.code_bodies(values1, self.addr1)
        values2 = self.run(2)
        addr2 = values2[:n]
        pool_addr, end_addr = values2[self.n_fixed - 3], values2[self.n_fixed - 2]
        code = self.out[:end_addr - self.base]
        if not code:
            raise AsmError("empty program: the source assembles to no bytes")
        self.verify(code, addr2, pool_addr)
        symbols = dict(zip(self.labels, values2[n:n + len(self.labels)]))
        lines: dict[int, tuple[int, str]] = {}
        bounds = addr2 + [pool_addr]
        for k, st in enumerate(self.stmts):
            if bounds[k + 1] > bounds[k] and st.kind != "empty":
                lines[bounds[k]] = (st.line, self.src_lines[st.line - 1].strip())
        return Program(self.base, bytes(code), symbols, lines)

    def verify(self, code: bytes, addr: list[int], pool_addr: int) -> None:
        """Catch what keystone gets wrong without saying so."""
        bounds = addr + [pool_addr]
        for k, st in enumerate(self.stmts):
            if addr[k] != self.addr1[k]:
                raise InvariantError(f"asm: line {st.line} moved between passes "
                                     f"({self.addr1[k]:#x} -> {addr[k]:#x})")
            size = bounds[k + 1] - bounds[k]
            if st.kind == "insn" and size != 4:
                reason = self.probe(st, st.body2, addr[k], min_bytes=4)
                raise self.error(reason or f"keystone emitted {size} bytes for one instruction", st)
            # (plus up to 3 bytes of padding when an instruction follows)
            padded = size - st.width * st.nelems in (1, 2, 3) and bounds[k + 1] % 4 == 0
            if st.kind == "data" and size != st.width * st.nelems and not padded:
                raise self.error(f"value out of range for `{st.name}` (keystone dropped "
                                 f"{st.width * st.nelems - size} of {st.width * st.nelems} bytes)",
                                 st)
            if st.target is None:
                continue
            word = code[addr[k] - self.base:addr[k] - self.base + 4]
            m = re.search(r"#(-?0x[0-9a-f]+|-?\d+)$", disassemble_one(word, addr[k]))
            got = int(m.group(1), 0) if m else None
            want = self.val[st.target[0]]
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
    return _Assembly(source, base).assemble(source)
