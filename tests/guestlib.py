"""Small helpers the guest-level tests share for writing AArch64 source."""

MASK64 = (1 << 64) - 1


def mov64(reg: str, value: int) -> list[str]:
    """movz/movk lines that load any 64-bit constant (keystone has no `ldr x0, =imm`)."""
    value &= MASK64
    out = [f"movz {reg}, #{value & 0xFFFF:#x}"]
    for shift in (16, 32, 48):
        if (value >> shift) & 0xFFFF:
            out.append(f"movk {reg}, #{(value >> shift) & 0xFFFF:#x}, lsl #{shift}")
    return out
