"""Write the SVG diagrams of labs 01-04 into assets/.

    .venv/bin/python tools/make_diagrams_01_04.py

Plain SVG built from small helpers, no plotting library. The SDEI state
diagram is checked against ``apflab.sdei.TRANSITIONS`` before it is written:
every state-changing (state, action) of the table is drawn exactly once, so
the picture cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FONT = 'font-family="sans-serif" font-size="12"'
ARROW = ('<defs><marker id="a" markerWidth="8" markerHeight="8" refX="7" refY="3" orient="auto">'
         '<path d="M0,0 L7,3 L0,6 z" fill="#333"/></marker></defs>')
BLUE, YELLOW, GREY = "#dbe9f6", "#fff3c4", "#f2f2f2"


def svg(width: int, height: int, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {FONT}>\n{ARROW}\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


def text(x, y, s, anchor="start", weight="normal", fill="#000", size=None) -> str:
    extra = f' font-size="{size}"' if size else ""
    return (f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-weight="{weight}" fill="{fill}"{extra}>'
            f'{escape(s)}</text>')


def box(x, y, w, h, fill="white", rx=4, stroke="#333") -> str:
    return f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" stroke="{stroke}"/>'


def line(x1, y1, x2, y2, arrow=True, dash=False) -> str:
    extra = ' marker-end="url(#a)"' if arrow else ""
    extra += ' stroke-dasharray="4 3"' if dash else ""
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#333"{extra}/>'


def path(d, arrow=True) -> str:
    extra = ' marker-end="url(#a)"' if arrow else ""
    return f'<path d="{d}" fill="none" stroke="#333"{extra}/>'


# ---------------------------------------------------------------------------- lab 01
def exception_levels() -> str:
    b = [text(380, 22, "Who runs where in apflab", "middle", "bold", size=14)]
    bands = [
        (40, "EL0", "user tasks (from lab 02 on)", "unprivileged: no system registers", "white"),
        (120, "EL1", "your guest program, later the guest kernel", "VBAR_EL1, ESR_EL1, ELR_EL1, SPSR_EL1 ...", BLUE),
        (200, "EL2", "the hypervisor: apflab's Host, written in Python", "router, SDEI, APF, stage 2, GIC, timer", YELLOW),
    ]
    for y, el, what, note, fill in bands:
        b += [box(20, y, 400, 58, fill), text(36, y + 35, el, weight="bold", size=16),
              text(90, y + 25, what), text(90, y + 44, note, fill="#555")]
    b += [box(20, 280, 400, 40, GREY), text(36, 298, "unicorn (QEMU's CPU core) executes EL0 and EL1"),
          text(36, 313, "instructions; EL2 is plain Python", fill="#555")]
    # transitions on the right: arrows first, labels to their right
    b += [line(440, 80, 440, 140), line(458, 140, 458, 80),
          text(475, 104, "down: svc, IRQ, fault (an exception)"), text(475, 124, "up: eret"),
          line(440, 160, 440, 220), line(458, 220, 458, 160),
          text(475, 184, "down: hvc #0, stage-2 fault, brk #0"),
          text(475, 204, "up: result in x0, or an injected event")]
    # PSTATE
    b += [text(20, 352, "PSTATE as SPSR_EL1 stores it (at reset 0x3c5):", weight="bold")]
    fields = [("N Z C V", "31:28", "flags"), ("...", "", ""), ("D A I F", "9:6", "masks: 1 = masked"),
              ("...", "", ""), ("M[3:0]", "3:0", "0b0101 = EL1h, 0b0100 = EL1t, 0 = EL0t")]
    x = 20
    for name, bits, note in fields:
        w = 40 if name == "..." else 110 if name != "M[3:0]" else 120
        b += [box(x, 362, w, 28, "white", rx=0), text(x + w / 2, 381, name, "middle")]
        if bits:
            b += [text(x + w / 2, 404, f"[{bits}]", "middle", fill="#555")]
        x += w
    b += [text(450, 381, "CurrentEL reads EL << 2: 0x4 means EL1", fill="#333"),
          text(450, 404, "M: 0b0101 EL1h, 0b0100 EL1t, 0b0000 EL0t", fill="#333")]
    return svg(760, 420, b)


# ---------------------------------------------------------------------------- lab 02
def vector_table() -> str:
    b = [text(380, 22, "The EL1 vector table: VBAR_EL1 + offset", "middle", "bold", size=14)]
    cols = ["synchronous", "IRQ", "FIQ", "SError"]
    rows = ["current EL, SP_EL0 (EL1t)", "current EL, SP_EL1 (EL1h)", "lower EL, AArch64 (EL0)",
            "lower EL, AArch32"]
    used = {(1, 0), (1, 1), (2, 0), (2, 1)}
    x0, y0, cw, rh, lw = 200, 50, 110, 34, 180
    for j, c in enumerate(cols):
        b.append(text(x0 + j * cw + cw / 2, y0 - 8, c, "middle", "bold"))
    for i, r in enumerate(rows):
        y = y0 + i * rh
        b += [box(x0 - lw, y, lw, rh, GREY, rx=0), text(x0 - lw + 8, y + 22, r)]
        for j in range(4):
            off = i * 0x200 + j * 0x80
            fill = BLUE if (i, j) in used else "white"
            b += [box(x0 + j * cw, y, cw, rh, fill, rx=0), text(x0 + j * cw + cw / 2, y + 22, f"{off:#05x}", "middle")]
    b.append(text(x0 - lw, y0 + 4 * rh + 20, "Each entry is 0x80 bytes (32 instructions); the table is "
                                             "2 KiB aligned. Blue: the entries the labs use.", fill="#555"))
    # entry and return
    y = 250
    b += [text(20, y, "Taking an exception to EL1 (unicorn does not vector, so the Python host does it):",
               weight="bold")]
    steps = ["ELR_EL1  <- where to return (the instruction after svc; the interrupted one for an IRQ)",
             "SPSR_EL1 <- PSTATE at the time (which EL, which SP, DAIF, flags)",
             "ESR_EL1  <- the syndrome, for synchronous exceptions only",
             "PSTATE   <- EL1h with D, A, I, F all masked",
             "PC       <- VBAR_EL1 + offset from the table above",
             "eret: PC <- ELR_EL1, PSTATE <- SPSR_EL1 (back to EL0, or wherever it came from)"]
    for k, s in enumerate(steps):
        b.append(f'<text x="30" y="{y + 22 + 19 * k}" font-family="monospace">{escape(s)}</text>')
    # ESR layout
    y = 400
    b += [text(20, y, "ESR_EL1:", weight="bold")]
    for name, bits, x, w in (("EC", "31:26", 90, 110), ("IL", "25", 200, 40), ("ISS", "24:0", 240, 300)):
        b += [box(x, y - 18, w, 26, "white", rx=0), text(x + w / 2, y, name, "middle"),
              text(x + w / 2, y + 24, f"[{bits}]", "middle", fill="#555")]
    b.append(text(550, y, "SVC/HVC/BRK: ISS[15:0] = imm16", fill="#333"))
    return svg(760, 440, b)


# ---------------------------------------------------------------------------- lab 03
def smccc() -> str:
    b = [text(380, 22, "An SMCCC function ID (w0) and where the hypervisor sends it", "middle", "bold", size=14)]
    fields = [("31", "fast call", 60), ("30", "SMC64", 60), ("29:24", "owner", 140), ("23:16", "0", 120),
              ("15:0", "function number", 240)]
    x = 60
    for bits, name, w in fields:
        b += [box(x, 40, w, 30, "white", rx=0), text(x + w / 2, 60, name, "middle"),
              text(x + w / 2, 86, f"[{bits}]", "middle", fill="#555")]
        x += w
    owners = ["owner: 0 Arm architecture, 2 SiP, 3 OEM, 4 standard secure (PSCI, SDEI),",
              "5 standard hypervisor, 6 vendor hypervisor (KVM)"]
    b += [text(60, 110, owners[0], fill="#333"), text(60, 126, owners[1], fill="#333"),
          text(60, 150, "0xC4000021 = fast | SMC64 | owner 4 | function 0x21: SDEI_EVENT_REGISTER", fill="#333"),
          text(60, 168, "0x86000000 = fast | SMC32 | owner 6 | function 0x00: KVM HYP_KVM_FEATURES", fill="#333")]
    # flow
    y = 200
    b += [box(20, y, 180, 120, BLUE), text(110, y + 22, "guest (EL1)", "middle", "bold"),
          text(32, y + 48, "x0 = function ID"), text(32, y + 66, "x1..x5 = arguments"),
          text(32, y + 84, "hvc #0"), text(32, y + 106, "result: x0 (signed)")]
    b += [line(200, y + 50, 260, y + 50), line(260, y + 100, 200, y + 100)]
    b += [box(260, y, 190, 120, YELLOW), text(355, y + 22, "Host._hypercall", "middle", "bold"),
          text(272, y + 48, "charge HostCosts.hvc_ns"), text(272, y + 66, "(1 µs by default)"),
          text(272, y + 84, "trace record \"hvc\""), text(272, y + 102, "(fid, result)")]
    b += [line(450, y + 60, 480, y + 60)]
    b += [box(480, y - 10, 270, 150, YELLOW), text(615, y + 10, "Router: owner by range", "middle", "bold")]
    ranges = [("0x80000000-0x80000001", "arch"), ("0xC4000020-0xC4000032", "SDEI"),
              ("0x86000000-0x8600FFFF", "KVM vendor"), ("anything else", "nobody: x0 = -1")]
    for k, (r, who) in enumerate(ranges):
        b += [text(490, y + 36 + 26 * k, r, size=11), text(740, y + 36 + 26 * k, who, "end", size=11)]
    b.append(text(20, 370, "The guest cannot tell who answered: it sees only x0, and the virtual time "
                           "the call cost.", fill="#555"))
    return svg(760, 390, b)


# ---------------------------------------------------------------------------- lab 04
STATE_POS = {0: (120, 110), 1: (380, 110), 3: (640, 110), 4: (120, 330), 5: (380, 330), 7: (640, 330)}
STATE_NAME = {0: "unregistered", 1: "registered", 3: "registered+enabled", 4: "unregister pending",
              5: "running, disabled", 7: "running"}
W, H = 150, 56

# (state, action, new state) -> (svg path, label x, label y, anchor). Hand laid out.
EDGES = {
    (0, "REGISTER", 1): ("M195,98 L305,98", 250, 92, "middle"),
    (1, "UNREGISTER", 0): ("M305,122 L195,122", 250, 138, "middle"),
    (1, "ENABLE", 3): ("M455,98 L565,98", 510, 92, "middle"),
    (3, "DISABLE", 1): ("M565,122 L455,122", 510, 138, "middle"),
    (3, "UNREGISTER", 0): ("M640,82 C640,36 120,36 120,82", 380, 42, "middle"),
    (3, "DISPATCH", 7): ("M620,138 L620,302", 612, 225, "end"),
    (7, "COMPLETE", 3): ("M660,302 L660,138", 668, 225, "start"),
    (5, "COMPLETE", 1): ("M380,302 L380,138", 388, 225, "start"),
    (4, "COMPLETE", 0): ("M120,302 L120,138", 128, 225, "start"),
    (5, "ENABLE", 7): ("M455,318 L565,318", 510, 312, "middle"),
    (7, "DISABLE", 5): ("M565,342 L455,342", 510, 358, "middle"),
    (5, "UNREGISTER", 4): ("M305,330 L195,330", 250, 322, "middle"),
    (7, "UNREGISTER", 4): ("M640,358 C640,408 120,408 120,358", 380, 402, "middle"),
}


def table_edges() -> set[tuple[int, str, int]]:
    from apflab.sdei import NOP, TRANSITIONS
    out = set()
    for (state, action), rule in TRANSITIONS.items():
        if isinstance(rule, tuple) and rule[1] is not NOP and rule[1] != state:
            out.add((state, action.name, rule[1]))
    return out


def sdei_states() -> str:
    drawn = set(EDGES)
    if drawn != table_edges():
        raise SystemExit(f"diagram and TRANSITIONS differ: only drawn {sorted(drawn - table_edges())}, "
                         f"only in table {sorted(table_edges() - drawn)}")
    b = [text(380, 20, "SDEI event states (EVENT_STATUS bits: 1 registered, 2 enabled, 4 running)",
              "middle", "bold", size=14)]
    for s, (cx, cy) in STATE_POS.items():
        b += [box(cx - W / 2, cy - H / 2, W, H, YELLOW if s & 4 else "white", rx=10),
              text(cx, cy - 4, str(s), "middle", "bold", size=16), text(cx, cy + 16, STATE_NAME[s], "middle")]
    for (s, action, new), (d, lx, ly, anchor) in sorted(EDGES.items()):
        label = "dispatch (host)" if action == "DISPATCH" else action
        b += [path(d), text(lx, ly, label, anchor, size=11)]
    b += [text(20, 432, "Yellow: a handler is running; UNREGISTER then returns PENDING and takes effect "
                        "at COMPLETE.", fill="#555"),
          text(20, 450, "Not drawn: calls that leave the state as it is, and the forbidden ones, "
                        "which return DENIED (-3).", fill="#555")]
    return svg(760, 462, b)


DIAGRAMS = {
    "lab01-exception-levels.svg": exception_levels,
    "lab02-vector-table.svg": vector_table,
    "lab03-smccc.svg": smccc,
    "lab04-sdei-states.svg": sdei_states,
}

if __name__ == "__main__":
    for name, fn in DIAGRAMS.items():
        (ROOT / "assets" / name).write_text(fn())
        print("wrote", f"assets/{name}")
