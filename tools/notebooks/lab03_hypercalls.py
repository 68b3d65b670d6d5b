"""Lab 03: hypercalls and SMCCC. Cells for labs/03-hypercalls.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/03-hypercalls.ipynb"
SOLUTION = "labs/solutions/03-hypercalls.ipynb"

TEACH = [
    md("""# Lab 03 — Hypercalls and the SMC Calling Convention

**Objectives.** By the end of this lab you can
1. make a hypercall with `hvc #0` and say what the hypervisor sees and returns;
2. take a 32-bit SMCCC function ID apart (fast call, SMC64, owner, function number) and
   say which service owns it;
3. probe the hypervisor: SMCCC_VERSION, an unknown ID (-1), and the KVM vendor features
   bitmap whose bit 2 announces asynchronous page faults (in the unmerged arm64 APF series'
   numbering: mainline Linux gives bit 2 to pKVM's HYP_MEMINFO);
4. measure what a hypercall costs in virtual time, and change that cost.

Everything the APF guest kernel of the later labs asks the host goes through this door.

""" + expected_time(60, "who answers (predict), predict the results (predict)")),
    md("""## One instruction, one convention

`hvc #0` traps from EL1 to EL2, the hypervisor. What the call *means* is fixed by Arm's
SMC Calling Convention (SMCCC, DEN0028): the function ID in `w0`, arguments in `x1`..`x17`
(apflab passes `x1`..`x5`), the result in `x0`, negative values for errors. The ID itself
says who should answer: bits [29:24] name the **owner** (Arm architecture, a silicon
vendor, a standard service such as PSCI or SDEI, the hypervisor vendor, ...), bit 30 says
whether it is the 64-bit (SMC64) form, bit 31 marks a fast call.

In apflab the hypervisor is Python: `Host._hypercall` charges the call's cost, asks the
**router** which service owns the ID, and writes the service's answer to `x0`.

![SMCCC function ID fields and the path of a hypercall](../assets/lab03-smccc.svg)"""),
    md("""## A first hypercall: SMCCC_VERSION

`0x80000000` is SMCCC_VERSION, owned by the Arm architecture service. The answer packs
the version as major << 16 | minor."""),
    code("""import apflab
from apflab.smccc import to_s64

m = apflab.Machine(seed=0)
m.load_asm('''
_start:
    movz x0, #0x8000, lsl #16   // w0 = 0x80000000: SMCCC_VERSION
    hvc  #0                     // to the hypervisor; the answer comes back in x0
    brk  #0
''')
r = m.run()
v = m.reg("x0")
print(f"x0 = {v:#x}: SMCCC {v >> 16}.{v & 0xFFFF}")
print(f"{r.instructions} instructions, {r.elapsed_ns} ns")"""),
    md("""Three instructions took over a microsecond: the hypercall is an exit to the host and
back, and the host charges the vCPU for it. The host records every hypercall in the trace
with its function ID and result:"""),
    code("""for rec in m.trace.select("hvc"):
    print(f"t={rec.t_ns} ns  fid={rec.get('fid'):#010x}  result={rec.get('result'):#x}")"""),
    md("""## A helper for the rest of the lab

To try many calls, a tiny guest that makes one hypercall with registers set from Python is
handy. `load_asm` puts PC back on `_start` each time, and the machine keeps its state (the
SDEI service remembers what earlier calls did). Results are shown as signed numbers, the way
the convention defines them."""),
    code("""m = apflab.Machine(seed=0)

def hypercall(fid, *args):
    m.load_asm("_start:\\n    hvc  #0\\n    brk  #0\\n")
    m.set_reg("x0", fid)
    for i, a in enumerate(args, start=1):
        m.set_reg(f"x{i}", a)
    m.run()
    return to_s64(m.reg("x0"))

print("SMCCC_VERSION      :", hex(hypercall(0x80000000)))
print("SDEI_VERSION       :", hex(hypercall(0xC4000020)))
print("unknown 0x82000000 :", hypercall(0x82000000))"""),
    md("""One more Arm architecture call: SMCCC_ARCH_FEATURES (`0x80000001`) asks whether another
architecture call is implemented: 0 for yes, -1 for no. apflab implements only the first two
(SMCCC_SOC_ID, `0x80000002`, is not there)."""),
    code("""print("ARCH_FEATURES(ARCH_FEATURES):", hypercall(0x80000001, 0x80000001))
print("ARCH_FEATURES(SOC_ID)       :", hypercall(0x80000001, 0x80000002))"""),
    md("""## Reading a function ID

Let us take a few IDs apart and ask the machine's router who owns each. The router is the
host's table of ID ranges (`m.host.router.owner(fid)` returns the service or `None`)."""),
    code("""OWNERS = {0: "Arm architecture", 1: "CPU", 2: "SiP", 3: "OEM", 4: "standard secure",
          5: "standard hypervisor", 6: "vendor hypervisor"}

def fields(fid):
    return {"fast": fid >> 31 & 1, "smc64": fid >> 30 & 1, "owner": fid >> 24 & 0x3F, "function": fid & 0xFFFF}

for fid in (0x80000000, 0xC4000021, 0x86000000, 0x84000000, 0x84000020, 0xC6000000):
    f = fields(fid)
    service = m.host.router.owner(fid)
    print(f"{fid:#010x}: {'SMC64' if f['smc64'] else 'SMC32'} owner {f['owner']} "
          f"({OWNERS[f['owner']]:19s}) function {f['function']:#06x} -> "
          f"{service.name if service else 'nobody: -1'}")"""),
    md("""Note the last three: `0x84000000` is PSCI_VERSION (owner 4, like SDEI, but apflab has
no PSCI service); `0x84000020` is what SDEI_VERSION would be as an SMC32 call, and SDEI
defines no SMC32 IDs; `0xC6000000` is the SMC64 twin of the KVM features call, which KVM
defines as SMC32 only. An ID nobody owns gets `-1`, SMCCC's NOT_SUPPORTED — an error code
in `x0`, not an exception: the guest asked politely and got a polite no."""),
    md("""## The KVM vendor service: discovering async page faults

A guest cannot assume its hypervisor offers APF: it asks. KVM's vendor-hypervisor
service answers `0x86000000` (HYP_KVM_FEATURES) with a bitmap of what it offers; bit 2 is
ASYNC_PF. Then `0x86000002` (ASYNC_PF) with a sub-function in `x1` tells the details the
guest needs (labs 05–08 use all of them).

That numbering is the unmerged arm64 APF patch series' (`ARM_SMCCC_KVM_FUNC_ASYNC_PF 2` in
its include/linux/arm-smccc.h; an earlier version of the series used 1), which the lab
follows. Mainline Linux never merged it: there function 2 of the KVM vendor service is
`ARM_SMCCC_KVM_FUNC_HYP_MEMINFO`, a pKVM call. A real guest must not read bit 2 as APF."""),
    code("""features = hypercall(0x86000000)
print(f"features bitmap = {features:#b}: ASYNC_PF {'offered' if features >> 2 & 1 else 'not offered'}")
for sub, what in ((0, "VERSION"), (1, "SLOTS (outstanding faults per vCPU)"),
                  (2, "SDEI event for 'page not present'"), (3, "PPI for 'page ready'")):
    print(f"ASYNC_PF {sub} {what:36s} -> {hypercall(0x86000002, sub):#x}")"""),
    md("""The host may refuse the feature (the "APF off" runs of later labs). Then the bitmap says
so, and a well-behaved guest never enables APF:"""),
    code("""m.apf.allowed = False
print(f"features with APF refused = {hypercall(0x86000000):#b}")
m.apf.allowed = True"""),
    md("""## What a hypercall costs

Every exit to the hypervisor costs time the guest does not get to use. apflab charges a
fixed, documented cost per exit (`apflab.HostCosts`: 1 µs per hypercall by default, between
the ~6,400 cycles measured on non-VHE KVM/arm and ~1,000 with VHE). The time is accounted to
the `host` mode of the trace's breakdown. Ten calls in a loop:"""),
    *predict("A loop makes ten `SMCCC_VERSION` hypercalls. How many microseconds of virtual time "
             "does it take with the default costs, and with `hvc_ns=6400`?", "predicted_us",
             "(None, None)"),
    code("""from apflab import HostCosts

def ten_calls(costs=None):
    mm = apflab.Machine(seed=0, costs=costs)
    mm.load_asm('''
_start:
    mov  x19, #10
1:  movz x0, #0x8000, lsl #16   // SMCCC_VERSION
    hvc  #0
    subs x19, x19, #1
    b.ne 1b
    brk  #0
''')
    r = mm.run()
    return r, mm.trace.breakdown()

print("default costs:", HostCosts())
for costs in (None, HostCosts(hvc_ns=250)):
    r, bd = ten_calls(costs)
    print(f"hvc_ns={(costs or HostCosts()).hvc_ns:5d}: {r.instructions} instructions, "
          f"{r.elapsed_ns:6d} ns elapsed = el1 {bd['el1']} + host {bd['host']}")"""),
    md("""42 instructions take 42 ns; the ten hypercalls take 10 µs. A guest that makes a hypercall
per page fault pays this on every fault: keep it in mind when the later labs compare APF on
and off."""),
]

EX1_INTRO = [
    md("""## Exercise 1: who answers?

Your seed picks four function IDs. For each, say which service of the lab hypervisor answers
it: `"arch"`, `"sdei"`, `"kvm"` or `"none"`. Read the bits; do not ask the router."""),
    code("""from apflab.exercises.lab03 import WhoAnswers

SEED = 1234                      # <- your seed
ex = WhoAnswers(SEED)
print(ex.question())"""),
]
EX1_STUDENT = [
    code("""my_answer = None                 # <- e.g. ["sdei", "none", "arch", "kvm"]
ex.check(my_answer)"""),
    code("""# print(ex.hint())               # uncomment when you want a hint"""),
]
EX1_SOLUTION = [
    md("""**Worked solution.** Apply the ranges of the figure: arch 0x80000000–0x80000001, SDEI
0xC4000020–0xC4000032, KVM vendor 0x86000000–0x8600FFFF, nothing else."""),
    solution("lab03-owner", "", """def owner_of(fid):
    if 0x80000000 <= fid <= 0x80000001:
        return "arch"
    if 0xC4000020 <= fid <= 0xC4000032:
        return "sdei"
    if 0x86000000 <= fid <= 0x8600FFFF:
        return "kvm"
    return "none"

my_answer = [owner_of(fid) for fid in ex.params["fids"]]
print(my_answer)"""),
    graded("lab03-owner-check", 1, "ex", "WhoAnswers", "apflab.exercises.lab03", "my_answer"),
]

EX2_INTRO = [
    md("""## Exercise 2: predict the results

Your seed picks four hypercalls, made in order by a fresh guest. Predict `x0` after each,
as signed ints. Careful: the SDEI calls change state that later calls see."""),
    code("""from apflab.exercises.lab03 import PredictResults

ex2 = PredictResults(SEED)
print(ex2.question())"""),
]
EX2_STUDENT = [
    code("""my_answer2 = None                # <- a list of four ints
ex2.check(my_answer2)"""),
    code("""# print(ex2.hint())               # uncomment when you want a hint"""),
]
EX2_SOLUTION = [
    md("""**Worked solution.** Reason about each call with what this lab showed; the PE mask is the
only state that carries from one call to the next in this pool."""),
    solution("lab03-results", "", """masked = True                    # SDEI: a PE starts masked
def predict(name):
    global masked
    table = {"SMCCC_VERSION": 0x10001, "SMCCC_ARCH_FEATURES(SMCCC_VERSION)": 0,
             "SMCCC_ARCH_FEATURES(0x80008000)": -1, "KVM HYP_KVM_FEATURES": 1 << 2,
             "KVM ASYNC_PF VERSION": 0x10000, "KVM ASYNC_PF SLOTS": 64, "KVM ASYNC_PF SDEI": 1,
             "KVM ASYNC_PF IRQ": 19, "SDEI_EVENT_STATUS(0)": 0, "SDEI_EVENT_STATUS(7)": -2,
             "SDEI_EVENT_ENABLE(0)": -3, "SDEI_EVENT_GET_INFO(2, PRIORITY)": 1,
             "0x82000000 (SiP)": -1, "0xC6000000": -1}
    if name == "SDEI_PE_MASK":
        result, masked = (0 if masked else 1), True
        return result
    if name == "SDEI_PE_UNMASK":
        masked = False
        return 0
    return table[name]

my_answer2 = [predict(name) for name in ex2.params["calls"]]
print(list(zip(ex2.params["calls"], my_answer2)))"""),
    graded("lab03-results-check", 1, "ex2", "PredictResults", "apflab.exercises.lab03", "my_answer2"),
]

SUMMARY = [
    md("""## Summary

- `hvc #0` with a function ID in `w0` is the guest's door to the hypervisor; the answer is in
  `x0`, negative for errors, and an ID nobody owns returns -1 (NOT_SUPPORTED).
- The ID carries its owner in bits [29:24] and its calling convention in bits 31 and 30: SDEI
  is standard-secure SMC64 (`0xC4000020`–`0xC400003F`), KVM's vendor service SMC32
  (`0x86000000`+).
- A guest discovers APF by asking: HYP_KVM_FEATURES bit 2 (the unmerged series' numbering),
  then the ASYNC_PF sub-functions.
- Each hypercall costs virtual time (`HostCosts.hvc_ns`, 1 µs by default), accounted as `host`
  time in the trace.

Next, lab 04 uses the SDEI service those IDs lead to: events the hypervisor delivers into the
guest. The solution notebook is `labs/solutions/03-hypercalls.ipynb`."""),
]

CELLS = TEACH + EX1_INTRO + EX1_STUDENT + EX2_INTRO + EX2_STUDENT + SUMMARY
SOLUTION_CELLS = TEACH + EX1_INTRO + EX1_SOLUTION + EX2_INTRO + EX2_SOLUTION + SUMMARY
