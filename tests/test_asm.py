"""Tests for apflab.asm: the keystone/capstone front end.

Several tests feed inputs that crash, hang or silently mis-assemble in raw
keystone (see the module docstring); if one of them regresses, the pytest
process itself may die or hang, which is the point of having them.
"""

import re
import shutil
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apflab import asm
from apflab.asm import Program, assemble, disassemble, disassemble_one
from apflab.errors import AsmError, ParameterError

BASE = 0x40080000


def dis(prog: Program, label_or_addr, count=1):
    addr = prog.symbols[label_or_addr] if isinstance(label_or_addr, str) else label_or_addr
    off = addr - prog.base
    return [t for _a, t in disassemble(prog.code[off:off + 4 * count], addr, count)]


def words(prog: Program) -> list[str]:
    return [t for _a, t in disassemble(prog.code, prog.base, len(prog.code) // 4)]


def asm_error(source: str, base: int = BASE) -> AsmError:
    with pytest.raises(AsmError) as info:
        assemble(source, base)
    return info.value


# ---------------------------------------------------------------------------
# symbols

SYMBOLS_SRC = """\
    .global _start
_start:
    mov x0, #1              // +0x00
    b next                  // +0x04
    .balign 16              // pad to +0x10
next: nop                   // +0x10
data: .quad 1, 2            // +0x14 .. +0x24
bytes: .byte 1, 2, 3        // +0x24 .. +0x27
msg: .asciz "hi"            // +0x27 .. +0x2a
    .balign 4               // pad to +0x2c
a: b: c: ret                // +0x2c
.Llocal: nop                // +0x30
    .equ CONST, 42
end:
"""


def test_symbols_match_hand_computed_addresses():
    p = assemble(SYMBOLS_SRC, 0x1000)
    assert p.base == 0x1000
    assert p.symbols == {
        "_start": 0x1000, "next": 0x1010, "data": 0x1014, "bytes": 0x1024,
        "msg": 0x1027, "a": 0x102C, "b": 0x102C, "c": 0x102C, ".Llocal": 0x1030,
        "end": 0x1034,
    }
    assert len(p.code) == 0x34
    assert p.code[0x14:0x24] == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")
    assert p.code[0x24:0x2A] == b"\x01\x02\x03hi\x00"
    assert dis(p, "_start", 2) == ["mov x0, #1", "b #0x1010"]


def test_symbols_at_a_high_base():
    p = assemble(SYMBOLS_SRC, 0xFFFF000000000000)
    assert p.symbols["end"] == 0xFFFF000000000034
    assert dis(p, 0xFFFF000000000004) == ["b #0xffff000000000010"]


def test_symbols_exclude_generated_names_and_equ():
    p = assemble("_start: nop\n1: b 1b\n.equ K, 3\nmov x0, #K", BASE)
    assert set(p.symbols) == {"_start"}


def test_quad_label_and_forward_location_expressions():
    # keystone computes `. - x` wrongly when x is defined later
    p = assemble("_start: nop\nd: .quad _start, x, . - x\n.word x - d\nx: nop", BASE)
    x = p.symbols["x"]
    d = p.symbols["d"]
    assert x == BASE + 4 + 24 + 4
    vals = [int.from_bytes(p.code[4 + 8 * k:12 + 8 * k], "little") for k in range(3)]
    assert vals == [BASE, x, (d + 16 - x) & (2**64 - 1)]   # `.` is that element's address
    assert int.from_bytes(p.code[28:32], "little") == x - d


# ---------------------------------------------------------------------------
# numeric local labels

def test_numeric_local_labels_forward_backward_repeated():
    src = """\
_start:
1:  nop             // +0x00
    b 1f            // +0x04 -> +0x0c
    b 1b            // +0x08 -> +0x00
1:  b 1b            // +0x0c -> itself (a definition on the line counts as before)
    b 2f            // +0x10 -> +0x18
    cbz x0, 1b      // +0x14 -> +0x0c
2:  b.ne 2b         // +0x18 -> itself
    adr x1, 1b      // +0x1c -> +0x0c
    .quad 1b, 2b    // +0x20
"""
    p = assemble(src, 0x1000)
    assert words(p)[:8] == [
        "nop", "b #0x100c", "b #0x1000", "b #0x100c", "b #0x1018",
        "cbz x0, #0x100c", "b.ne #0x1018", "adr x1, #0x100c",
    ]
    assert p.code[0x20:0x30] == (0x100C).to_bytes(8, "little") + (0x1018).to_bytes(8, "little")
    assert not any(k.startswith(".L__apf") for k in p.symbols)


def test_things_that_look_like_local_refs_are_left_alone():
    src = """\
_start:
1:  mov x0, #0x1b
    orr x1, x1, #0x1f
    add x1, x1, #1
    ldr x2, [x1]
    ld1 {v0.16b}, [x0]
    mov x3, #0b1
    fmov d1, #1.0
    b 1b
"""
    assert words(assemble(src, 0x1000)) == [
        "mov x0, #0x1b", "orr x1, x1, #0x1f", "add x1, x1, #1", "ldr x2, [x1]",
        "ld1 {v0.16b}, [x0]", "mov x3, #1", "fmov d1, #1.00000000", "b #0x1000",
    ]


def test_missing_local_label_forward():
    e = asm_error("_start: nop\n  b 2f\n2: nop\n  b 2f\n")
    assert e.line == 4 and e.text == "b 2f"
    assert "no local label 2 after this line" in str(e)


def test_missing_local_label_backward():
    e = asm_error("_start: nop\n  cbz x0, 3b\n3: nop\n")
    assert e.line == 2
    assert "no local label 3 before this line" in str(e)


# ---------------------------------------------------------------------------
# comments and statement separators

def test_comments_of_each_kind_keep_immediates():
    src = """\
// a full-line comment, with #1 and ; in it
  # a hash comment line (only at the start of a line)
_start: mov x0, #1            // trailing comment
mov x1, #2 /* inline */ ; mov x2, #3
/* a block comment
   over two lines: mvo x0, #1 */ mov x3, #4
msg: .ascii "a // b ; c # d /* e */"
    .balign 4
    mov x4, #'#'
    mov x5, #';'
"""
    p = assemble(src, 0x1000)
    assert dis(p, "_start", 4) == ["mov x0, #1", "mov x1, #2", "mov x2, #3", "mov x3, #4"]
    s = p.symbols["msg"] - p.base
    assert p.code[s:s + 22] == b"a // b ; c # d /* e */"
    assert words(p)[-2:] == ["mov x4, #0x23", "mov x5, #0x3b"]
    # line numbers survive the block comment
    assert p.lines[0x100C] == (6, "over two lines: mvo x0, #1 */ mov x3, #4")


def test_error_line_after_block_comment():
    e = asm_error("_start: nop\n/*\n\n*/\nmvo x0, #1\n")
    assert e.line == 5


def test_crlf_line_endings():
    p = assemble("_start:\r\n  mov x0, #1\r\n  ret\r\n", 0x1000)
    assert words(p) == ["mov x0, #1", "ret"]


# ---------------------------------------------------------------------------
# errors

def test_typo_mnemonic_names_line_3():
    e = asm_error("_start:\n  mov x0, #0\n  mvo x0, #1\n  ret\n")
    assert (e.line, e.text) == (3, "mvo x0, #1")
    assert "invalid mnemonic" in e.message
    assert str(e).startswith("line 3: 'mvo x0, #1': ")


def test_bad_register():
    e = asm_error("_start:\n  nop\n  mov x99, #1\n")
    assert e.line == 3 and "invalid operand" in e.message


def test_undefined_label_is_named():
    e = asm_error("_start:\n  nop\n  b nowhere\n  nop\n")
    assert e.line == 3 and "`nowhere`" in e.message and "undefined symbol" in e.message


@pytest.mark.parametrize("line", ["cbz x0, nowhere", "adr x0, nowhere", "ldr x0, =nowhere",
                                  "mov x0, #nowhere", ".quad nowhere", ".byte nowhere + 1"])
def test_undefined_symbol_in_other_places(line):
    e = asm_error(f"_start: nop\n  {line}\n")
    assert e.line == 2 and "undefined symbol `nowhere`" in e.message


def test_undefined_symbol_in_equ_blames_the_equ():
    e = asm_error("_start: nop\n.equ A, nowhere + 1\nmov x0, #A\n")
    assert e.line == 2 and "`nowhere`" in e.message


def test_duplicate_label():
    e = asm_error("_start: nop\nloop: nop\n  b loop\nloop: nop\n")
    assert e.line == 4 and "label `loop` already defined on line 2" in e.message


@pytest.mark.parametrize("source", ["", "   \n\n", "// nothing\n/* at all */\n",
                                    "a:\nb:\n", ".equ X, 1\n", ".quad 1, 2\n"])
def test_empty_program(source):
    e = asm_error(source)
    assert "empty program" in str(e) and e.line is None


@pytest.mark.parametrize("source", [b"nop", None, ["nop"]])
def test_source_must_be_str(source):
    with pytest.raises(TypeError):
        assemble(source, BASE)


def test_bad_base():
    with pytest.raises(TypeError):
        assemble("nop", "0x1000")
    with pytest.raises(ParameterError):
        assemble("nop", 0x1002)
    with pytest.raises(ParameterError):
        assemble("nop", -4)


def test_unterminated_things():
    assert asm_error("_start: nop\n.ascii \"abc\nnop").line == 2
    assert "unterminated /* comment" in asm_error("nop\n/* never closed\nnop").message


@pytest.mark.parametrize("source, line, words_", [
    # each of these kills or hangs the process, or silently mis-assembles,
    # when given to keystone directly
    ("_start: b far\n.space 0x8000000\nfar: nop", 1, "cannot reach"),
    ("_start: tbz x0, #1, far\n.space 0x8000\nfar: nop", 1, "±32 KiB"),
    ("_start: b.ne far\n.space 0x100000\nfar: nop", 1, "±1 MiB"),
    ("_start: adr x0, far\n.space 0x100000\nfar: nop", 1, "cannot reach"),
    ("_start: nop\nb foo+2\nfoo: nop", 2, "not a multiple of 4"),
    ("_start: nop\n.word 0x100000000", 2, "out of range"),
    ("_start: nop\n.hword 70000", 2, "out of range"),
    ("_start: nop\n.quad 0x10000000000000000", 2, "does not fit in 64 bits"),
    ("_start: nop\nx: .byte x", 2, "does not fit in .byte"),
    ("_start: ldr x0, =0x1234567890\n.space 0x100000\nnop", 1, ".ltorg"),
    ("_start: ldr w0, =0x123456789", 1, "32-bit"),
    ("_start: nop\n.org 0x100", 2, "`.org` is not supported"),
    ("_start: nop\n.foo 3", 2, "unknown or unsupported directive `.foo`"),
    ("_start: nop\nadrp x0, :got:foo\nfoo: nop", 2, "`:got:` is not supported"),
    ("_start: nop\nmovz x0, #:abs_g0:far\n.space 0x10000\nfar: nop", 2, "does not fit"),
    # found by fuzzing: each of these hangs keystone or makes it drop code
    ("_start: nop\n.equ E-4, -4", 2, "expected `.equ NAME, value`"),
    ("_start: nop\n.word 0x-4", 2, "malformed number `0x`"),
    ("_start: nop\n.word 08", 2, "malformed number `08`"),
    ("_start: nop\n.quad ,", 2, "missing argument"),
    ("_start: nop\n.byte 1,,2", 2, "missing argument"),
    ("_start: nop\n.word 1)", 2, "malformed argument `1)`"),
    ("_start: nop\n.quad ()", 2, "malformed argument"),
    ("_start: nop\n.zero -4", 2, "negative"),
    ("_start: nop\n.align -1", 2, "power of 2"),
    ("_start: nop\n.rept -1\nnop\n.endr", 2, "out of range"),
    ("_start: nop\nx: nop\n.space 16 - (. - x)", 3, "must be a constant"),
    ("_start: nop\n.space 0x20000000", 2, "more than 0x10000000 bytes"),
    ("_start: nop\nb .-\nnop", 2, "malformed expression `.-`"),
    ("_start: nop\nldr x0, =1*/2\nnop", 2, "malformed expression"),
    ("_start: nop\nadd x0, x0, #1 +\nnop", 2, "unknown token in expression"),
    ("_start: nop\nmsr vbar_el1, x0 +\nnop", 2, "silently ignored"),
    ("_start: nop\n@", 2, "expected an instruction"),
])
def test_keystone_traps_become_asm_errors(source, line, words_):
    e = asm_error(source, 0x10000)
    assert e.line == line
    assert words_ in e.message


def test_misaligned_alignment_for_base():
    e = asm_error("_start: nop\n.balign 0x800\nv: nop", 0x40080400)
    assert e.line == 2 and "base" in e.message


def test_error_inside_macro_body():
    # blamed on the body line, naming the call
    e = asm_error(".macro bad r\n  mvo \\r\n.endm\n_start: nop\n  bad x0\n")
    assert (e.line, e.text) == (2, "mvo \\r")
    assert "invalid mnemonic `mvo`" in e.message
    assert "(in macro `bad` used on line 5)" in e.message
    # a macro that is never used is not assembled (as in GNU as)
    assert words(assemble(".macro bad\n  mvo x0\n.endm\n_start: nop\n", 0x1000)) == ["nop"]


@pytest.mark.parametrize("line, words_", [
    ("b .-", "malformed expression"),
    ("add x0, x0, #1 +", "unknown token in expression"),
    ("mov x0, #)", "unbalanced brackets"),
    ("mvo x0", "invalid mnemonic"),
])
def test_bad_statement_inside_rept(line, words_):
    # keystone drops these inside a block (and mid-source) without an error
    e = asm_error(f"_start: nop\n.rept 2\n  {line}\n.endr\nnop\n")
    assert e.line == 3 and words_ in e.message


@pytest.mark.parametrize("body, tail, words_", [
    # out-of-range or misaligned branches abort keystone, also inside blocks
    ("b far", ".space 0x8000000\nfar: nop", "cannot reach"),
    ("cbz x0, far", ".space 0x100000\nfar: nop", "cannot reach"),
    ("b far + 2", "far: nop", "not a multiple of 4"),
    ("b . + 0x8000000", "nop", "cannot reach"),
    ("tbz x0, #0, far", ".space 0x7ffc\nfar: nop", "cannot reach"),   # second copy only
])
def test_branches_inside_blocks_are_checked(body, tail, words_):
    e = asm_error(f"_start: nop\n.rept 2\n  {body}\n.endr\n{tail}\n", 0x1000)
    assert e.line == 3 and words_ in e.message


def test_branches_inside_blocks():
    p = assemble("_start: nop\nx: .rept 2\n  b x\n  b . + 8\n  adr x0, x + 1\n  adrp x1, x\n"
                 "  b 0x1000\n.endr\n.if 1\n  cbz x0, x\n.endif\n", 0x1000)
    assert words(p) == ["nop",
                        "b #0x1004", "b #0x1010", "adr x0, #0x1005", "adrp x1, #0x1000",
                        "b #0x1000",
                        "b #0x1004", "b #0x1024", "adr x0, #0x1005", "adrp x1, #0x1000",
                        "b #0x1000",
                        "cbz x0, #0x1004"]


def test_rept_irp_irpc_if_macro_expansion():
    src = """\
_start:
    .rept 3
1:  b 1b                    // numeric labels work per copy
    .endr
    .irp reg, x1, x2
    mov \\reg, #7
    .endr
    .irpc n, 34
    mov x\\n, #\\n
    .endr
    .equ FAST, 1
    .if FAST == 1
    mov x5, #1
    .elseif FAST == 2
    mov x5, #2
    .else
    mov x5, #3
    .endif
    .ifdef FAST
    mov x6, #1
    .endif
    .ifndef SLOW
    mov x7, #1
    .endif
    .macro push2 a, b=x30
    stp \\a, \\b, [sp, #-16]!
    .endm
    push2 x29
    push2 b=x2, a=x1
    .macro sel a:req, rest:vararg
    .ifb \\rest
    mov \\a, #0
    .exitm
    .endif
    mov \\a, #1
    .endm
    sel x8
    sel x9, anything, here
"""
    p = assemble(src, 0x1000)
    assert words(p) == [
        "b #0x1000", "b #0x1004", "b #0x1008",
        "mov x1, #7", "mov x2, #7", "mov x3, #3", "mov x4, #4",
        "mov x5, #1", "mov x6, #1", "mov x7, #1",
        "stp x29, x30, [sp, #-0x10]!", "stp x1, x2, [sp, #-0x10]!",
        "mov x8, #0", "mov x9, #1",
    ]
    # every copy maps to its body line
    assert p.lines[0x1004] == (3, "1:  b 1b                    // numeric labels work per copy")
    assert p.lines[0x100C] == (6, "mov \\reg, #7")


@pytest.mark.parametrize("source, line, words_", [
    (".rept 2\nnop\n", 1, "never closed"),
    ("nop\n.endr\n", 2, "without an open block"),
    (".if 1\nnop\n.endr\n", 3, "does not close"),
    (".macro m a:req\nmov x0, #\\a\n.endm\nm\n", 4, "needs a value for `a`"),
    (".macro m\nnop\n.endm\n.macro m\nnop\n.endm\n", 4, "already defined"),
    (".macro m\nm\n.endm\nm\n", 2, "nested too deeply"),
    ("x: nop\n.rept x\nnop\n.endr\n", 2, "must be a constant"),
    (".rept 2\nx: nop\n.endr\n", 2, "label `x` already defined"),
    (".exitm\n", 1, "outside a macro"),
])
def test_block_errors(source, line, words_):
    e = asm_error(source)
    assert e.line == line and words_ in e.message


# ---------------------------------------------------------------------------
# directives and the instructions keystone gets wrong

def test_directives():
    src = """\
_start: nop
    .equ N, 5
    .set M, N * 2
    P = 3
    mov x0, #N
    mov x1, #(M + P)
    tbz x0, #P, _start
    .inst 0xd503201f
d:  .byte N, 0xff, -1
    .hword 0x1234
    .2byte 1
    .short 2
    .word 0xdeadbeef
    .long 3
    .4byte 4
    .dword 5
    .xword 6
    .8byte 7
    .skip 2
    .zero 2
    .fill 3, 1, 0xaa
    .space 1, 0x55
    .string "s"
    .p2align 3
e:  .quad e
"""
    p = assemble(src, 0x1000)
    assert words(p)[:5] == ["nop", "mov x0, #5", "mov x1, #0xd", "tbz w0, #3, #0x1000", "nop"]
    d = p.symbols["d"] - p.base
    assert p.code[d:d + 3] == b"\x05\xff\xff"
    assert p.code[d + 3:d + 5] == b"\x34\x12"
    assert p.code[d + 9:d + 13] == b"\xef\xbe\xad\xde"
    e = p.symbols["e"]
    assert e % 8 == 0
    assert p.code[e - p.base:] == e.to_bytes(8, "little")


def test_instruction_after_odd_data_is_aligned_like_gnu_as():
    # GNU as pads with zeros up to the instruction; labels stay before the padding
    p = assemble("_start: nop\n.byte 1\nfoo: nop\n.ascii \"ab\"\nbar:\nb _start\n", 0x1000)
    assert p.code.hex() == "1f2003d5" "01000000" "1f2003d5" "61620000" "fcffff17"
    assert (p.symbols["foo"], p.symbols["bar"]) == (0x1005, 0x100E)
    assert p.lines[0x1008] == (3, "foo: nop") and p.lines[0x1010] == (6, "b _start")


def test_set_redefinition_is_honoured_in_order():
    # the table holds each name's final value; .equ-only expressions are
    # therefore left to keystone, which evaluates them in place
    src = """\
_start:
    .set N, 1
    mov x0, #N
    .byte N
    .balign 4
    .set N, N + 1
    mov x1, #N
    .byte N
    .balign 4
    .space N * 2
x:  mov x2, #(x - _start)
    .equ OFF, x - _start
    .word OFF
"""
    p = assemble(src, 0x1000)
    assert dis(p, 0x1000) == ["mov x0, #1"]
    assert p.code[4] == 1 and p.code[12] == 2
    assert dis(p, 0x1008) == ["mov x1, #2"]
    assert p.symbols["x"] == 0x1014
    assert dis(p, "x") == ["mov x2, #0x14"]
    assert p.code[-4:] == (0x14).to_bytes(4, "little")


def test_section_directives_are_ignored():
    # `.text` segfaults keystone, `.section` makes it return nothing at all
    p = assemble(".arch armv8-a\n.section .text.boot\n.text\n.globl _start\n"
                 ".type _start, %function\n_start: nop\n.size _start, . - _start\n"
                 ".data\nv: .quad 1\n.bss\n.cfi_startproc\n", 0x1000)
    assert p.symbols == {"_start": 0x1000, "v": 0x1004}
    assert len(p.code) == 12


def test_end_directive_stops_assembly():
    assert words(assemble("_start: nop\n.end\nmvo x0\n", 0x1000)) == ["nop"]


def test_system_instructions():
    src = """\
_start:
    msr s3_0_c12_c12_0, x0
    mrs x1, s3_0_c12_c12_0
    msr vbar_el1, x0
    mrs x2, currentel
    msr daifset, #2
    tlbi vmalle1
    dsb sy
    isb
    hvc #0
    svc #1
    brk #0
    eret
    wfi
"""
    assert words(assemble(src, 0x1000)) == [
        # capstone names the read side of s3_0_c12_c12_0 (icc_iar1_el1)
        "msr s3_0_c12_c12_0, x0", "mrs x1, icc_iar1_el1", "msr vbar_el1, x0",
        "mrs x2, currentel", "msr daifset, #2", "tlbi vmalle1", "dsb sy", "isb",
        "hvc #0", "svc #1", "brk #0", "eret", "wfi",
    ]


def test_adrp_lo12_at_high_base_after_alignment():
    # keystone encodes `adrp x0, label` as the absolute page number, `:lo12:`
    # aborts above 4 KiB, and numeric targets ignore alignment padding
    src = """\
_start: nop
    .balign 0x800
    adrp x0, data
    add x0, x0, :lo12:data
    ldr x1, [x0, #:lo12:data]
    movz x2, #:abs_g1:data
    movk x2, #:abs_g0_nc:data
    .balign 0x1000
    .space 0x2340
data: .quad 7
"""
    p = assemble(src, 0x40080000)
    data = p.symbols["data"]
    assert data == 0x40083340
    assert dis(p, 0x40080800, 5) == [
        "adrp x0, #0x40083000", "add x0, x0, #0x340", "ldr x1, [x0, #0x340]",
        "mov x2, #0x40080000", "movk x2, #0x3340",
    ]


def test_branches_after_balign_reach_their_labels():
    src = ("_start: nop\n.balign 0x40\nx: b x\nb.eq x\ncbz x0, x\ntbnz w1, #2, x\nb .\nb .-4\n"
           "b 0x40081000\n")
    p = assemble(src, 0x40081000)
    x = p.symbols["x"]
    assert x == 0x40081040
    assert dis(p, x, 7) == [f"b #{x:#x}", f"b.eq #{x:#x}", f"cbz x0, #{x:#x}",
                            f"tbnz w1, #2, #{x:#x}", f"b #{x + 16:#x}", f"b #{x + 16:#x}",
                            "b #0x40081000"]


def test_literal_pools():
    src = """\
_start:
    ldr x0, =0x1122334455667788
    ldr w1, =0x11223344
    ldr x2, =value
    ldr x3, =5
    .ltorg
value: nop
    ldr x4, =.
"""
    p = assemble(src, 0x1000)

    def loaded(addr, width):
        text = dis(p, addr)[0]
        target = int(re.search(r"#(0x[0-9a-f]+)$", text).group(1), 16)
        return int.from_bytes(p.code[target - p.base:target - p.base + width], "little")

    assert loaded(0x1000, 8) == 0x1122334455667788
    assert loaded(0x1004, 4) == 0x11223344
    assert loaded(0x1008, 8) == p.symbols["value"]
    assert loaded(0x100C, 8) == 5
    assert p.symbols["value"] < 0x1000 + len(p.code) - 8     # .ltorg placed the pool
    after = p.symbols["value"] + 4
    assert loaded(after, 8) == after
    assert (0x1000 + len(p.code)) % 8 == 0


def test_rept_vector_table():
    src = "_start: nop\n.balign 0x800\nvectors:\n.rept 16\n  b .\n  .balign 0x80\n.endr\n"
    p = assemble(src, 0x40080000)
    v = p.symbols["vectors"]
    assert v == 0x40080800 and len(p.code) == 0x1000
    for k in range(16):
        assert dis(p, v + 0x80 * k) == [f"b #{v + 0x80 * k:#x}"]


def test_macro():
    src = ".macro inc reg\n  add \\reg, \\reg, #1\n.endm\n_start: inc x0\n  inc x1\nx: b x\n"
    p = assemble(src, 0x1000)
    assert words(p) == ["add x0, x0, #1", "add x1, x1, #1", "b #0x1008"]
    assert p.symbols["x"] == 0x1008


def test_uppercase_source():
    assert words(assemble("_START: MOV X0, #1\n B.NE _START\n", 0x1000)) == [
        "mov x0, #1", "b.ne #0x1000"]


# ---------------------------------------------------------------------------
# lines map

def test_lines_map():
    src = """\
_start:
    mov x0, #1
    nop ; nop
    .balign 16
v:  .quad 5
    ldr x1, =0x123456789
"""
    p = assemble(src, 0x2000)
    assert p.lines == {
        0x2000: (2, "mov x0, #1"),
        0x2004: (3, "nop ; nop"),
        0x2008: (3, "nop ; nop"),
        0x200C: (4, ".balign 16"),
        0x2010: (5, "v:  .quad 5"),
        0x2018: (6, "ldr x1, =0x123456789"),
    }


# ---------------------------------------------------------------------------
# disassembly

def test_disassemble_round_trip():
    src = "hvc #0\neret\nmsr vbar_el1, x0\nbrk #0\n"
    p = assemble(src, 0x1000)
    assert disassemble(p.code, 0x1000, 4) == [
        (0x1000, "hvc #0"), (0x1004, "eret"), (0x1008, "msr vbar_el1, x0"), (0x100C, "brk #0")]
    for addr, text in disassemble(p.code, 0x1000, 4):
        assert assemble(text, addr).code == p.code[addr - 0x1000:addr - 0x1000 + 4]


def test_disassemble_undecodable_and_counts():
    code = b"\xff\xff\xff\xff" + bytes.fromhex("1f2003d5") + b"\x00\x00"
    assert disassemble(code, 0x10, 5) == [(0x10, ".inst 0xffffffff"), (0x14, "nop")]
    assert disassemble(code, 0x10) == [(0x10, ".inst 0xffffffff")]
    assert disassemble(code, 0x10, 0) == []
    assert disassemble_one(bytes.fromhex("1f2003d5"), 0) == "nop"
    assert disassemble_one(bytearray(b"\x00\x00\x20\xd4"), 0) == "brk #0"
    with pytest.raises(ValueError):
        disassemble_one(b"\x1f\x20\x03", 0)
    with pytest.raises(ValueError):
        disassemble(code, 0, -1)


def test_engine_handles_are_cached():
    assert asm._ks() is asm._ks()
    assert asm._cs() is asm._cs()


# ---------------------------------------------------------------------------
# speed

def kernel_source(n_lines: int) -> str:
    out = [".global _start", "_start:", "  ldr x0, =vectors", "  msr vbar_el1, x0",
           "  adrp x1, stack_top", "  add x1, x1, :lo12:stack_top", "  mov sp, x1"]
    k = 0
    while len(out) < n_lines - 40:
        out += [f"func{k}:  // function {k}", f"  mov x0, #{k}", "1: subs x0, x0, #1",
                "  b.ne 1b", f"  cbz x0, func{k // 2}", f"  ldr x2, =0x{k:x}1234567",
                "  /* block */ add x3, x3, #1 ; hvc #0", "  ret"]
        k += 1
    out += [".balign 0x800", "vectors:"]
    for _ in range(16):
        out += ["  b .", "  .balign 0x80"]
    out += [".balign 16", "stack: .space 4096", "stack_top:", 'msg: .asciz "hello"']
    return "\n".join(out) + "\n"


def test_400_line_kernel_is_fast():
    src = kernel_source(400)
    assert 380 <= len(src.splitlines()) <= 420
    assemble(src, BASE)                        # warm up the handles
    t = time.perf_counter()
    p = assemble(src, BASE)
    assert time.perf_counter() - t < 0.5
    assert p.symbols["vectors"] % 0x800 == 0


def test_error_at_end_of_400_lines_is_fast():
    src = kernel_source(400) + "  mvo x0, #1\n"
    t = time.perf_counter()
    e = asm_error(src)
    assert time.perf_counter() - t < 0.5
    assert e.line == len(src.splitlines())


# ---------------------------------------------------------------------------
# property: an independent layout model agrees with the assembler

_BRANCHES = ["b {t}", "bl {t}", "b.ne {t}", "cbz x1, {t}", "tbnz w2, #5, {t}", "adr x3, {t}",
             "adrp x4, {t}", "ldr x5, {t}"]
_items = st.lists(st.one_of(
    st.tuples(st.just("nop")),
    st.tuples(st.just("branch"), st.integers(0, len(_BRANCHES) - 1), st.integers(0, 7)),
    st.tuples(st.just("bytes"), st.integers(1, 5)),
    st.tuples(st.just("align"), st.integers(2, 6)),
    st.tuples(st.just("lit"), st.integers(0, 7)),
), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(items=_items, base_page=st.integers(0x40000, 0x40100))
def test_layout_model(items, base_page):
    base = base_page << 12
    lines, addr, labels, expect = ["_start:"], base, {}, []
    for k, item in enumerate(items):
        if item[0] == "nop":
            lines.append(f"L{k}: nop")
            labels[f"L{k}"] = addr
            addr += 4
        elif item[0] == "branch":
            fmt = _BRANCHES[item[1]]
            lines.append(f"L{k}: " + fmt.format(t=f"T{item[2]}"))
            labels[f"L{k}"] = addr
            expect.append((addr, item[1], f"T{item[2]}"))
            addr += 4
        elif item[0] == "bytes":
            lines.append(f"L{k}: .byte " + ", ".join(["7"] * item[1]))
            lines.append("  .balign 4")     # keep instructions aligned
            labels[f"L{k}"] = addr
            addr = -(-(addr + item[1]) // 4) * 4
        elif item[0] == "align":
            lines.append(f"  .balign {1 << item[1]}")
            addr = -(-addr // (1 << item[1])) * (1 << item[1])
        else:
            lines.append(f"  ldr x6, =T{item[1]}")
            expect.append((addr, -1, f"T{item[1]}"))
            addr += 4
    lines.append("  .balign 4")
    addr = -(-addr // 4) * 4
    for t in range(8):                 # targets: 4-aligned, within reach of tbnz
        lines.append(f"T{t}: nop")
        labels[f"T{t}"] = addr
        addr += 4
    p = assemble("\n".join(lines) + "\n", base)
    assert {k: v for k, v in p.symbols.items() if k != "_start"} == labels
    for pc, kind, target in expect:
        want = labels[target]
        text = dis(p, pc)[0]
        got = int(re.search(r"#(0x[0-9a-f]+)$", text).group(1), 16)
        if kind == -1:                 # literal load: read the pool entry
            assert int.from_bytes(p.code[got - base:got - base + 8], "little") == want
        elif _BRANCHES[kind].startswith("adrp"):
            assert got == want & ~0xFFF
        else:
            assert got == want, text


# ---------------------------------------------------------------------------
# differential: the same bytes as GNU as + ld (when binutils-aarch64 is installed)

_GNU_AS = shutil.which("aarch64-linux-gnu-as")
_GNU_LD = shutil.which("aarch64-linux-gnu-ld")
_GNU_OBJCOPY = shutil.which("aarch64-linux-gnu-objcopy")


def gnu_assemble(source: str, base: int, tmp_path) -> bytes:
    s, o, elf, bin_ = (tmp_path / n for n in ("t.s", "t.o", "t.elf", "t.bin"))
    s.write_text(source + "\n")
    subprocess.run([_GNU_AS, "-o", o, s], check=True, capture_output=True)
    subprocess.run([_GNU_LD, f"-Ttext={base:#x}", "-e", f"{base:#x}", "-o", elf, o],
                   check=True, capture_output=True)
    subprocess.run([_GNU_OBJCOPY, "-O", "binary", elf, bin_], check=True)
    return bin_.read_bytes()


_GNU_HEAD = """\
    .equ K, 5
    .set CNT, 0
    .macro twice reg
    add \\reg, \\reg, \\reg
    .endm
_start:"""
_GNU_FRAGMENTS = [
    "nop", "b T{t}", "bl T{t}", "b.ne T{t}", "cbz x1, T{t}", "tbnz w4, #{n5}, T{t}",
    "adr x5, T{t} + {n}", "adrp x6, T{t}\n    add x6, x6, :lo12:T{t}",
    "movz x8, #:abs_g1:T{t}\n    movk x8, #:abs_g0_nc:T{t}", "ldr x9, T{t}", ".quad T{t}, . - T{t}",
    ".word T{t} - _start", ".byte {n}, 1", ".hword {n}", ".ascii \"a;b\"", ".balign {a}",
    ".space {n}",
    "1: b 1b", "cbz x0, 1f\n1:", ".set CNT, CNT + 1\n    mov x10, #CNT", "mov x11, #(K * 3 + {n})",
    ".rept {n4}\n    add x13, x13, #1\n    .endr", ".irp r, 1, 2\n    mov x\\r, #{n}\n    .endr",
    "twice x{n4}", ".if K > {n}\n    mov x14, #1\n    .else\n    mov x14, #2\n    .endif",
    "b . + {n4} * 4", "mrs x0, currentel", "msr vbar_el1, x0", "stp x0, x1, [sp, #-16]!",
]


@pytest.mark.skipif(not (_GNU_AS and _GNU_LD and _GNU_OBJCOPY),
                    reason="needs binutils-aarch64-linux-gnu")
@settings(max_examples=40, deadline=None)
@given(picks=st.lists(st.tuples(st.sampled_from(_GNU_FRAGMENTS), st.integers(0, 3),
                                st.sampled_from([0, 1, 2, 3, 4, 7, 8, 100])),
                      min_size=1, max_size=25),
       align=st.sampled_from([4, 8, 16, 64]))
def test_same_bytes_as_gnu_as(picks, align, tmp_path_factory):
    lines = [_GNU_HEAD]
    for frag, t, n in picks:
        lines.append("    " + frag.format(t=t, n=n, n4=n % 4, n5=n % 32, a=align))
    lines += ["    .balign 4"] + [f"T{t}: nop" for t in range(4)]
    source = "\n".join(lines)
    try:
        mine = assemble(source, 0x40000000).code
    except AsmError as e:
        # only for what GNU as rejects too (misaligned targets after .byte etc.)
        with pytest.raises(subprocess.CalledProcessError):
            gnu_assemble(source, 0x40000000, tmp_path_factory.mktemp("gnu"))
        return
    assert mine == gnu_assemble(source, 0x40000000, tmp_path_factory.mktemp("gnu"))
