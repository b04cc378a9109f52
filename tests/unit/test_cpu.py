"""The CPU as the toolkit understands it, on x86 and ARM alike: instruction sets from x86's ``flags`` or ARM's
``Features``, what INT8 and bf16 kernels do, doctor's words and a plan's "same kind of CPU"; from real
/proc/cpuinfo entries of each kind of machine."""

from __future__ import annotations

import re

import pytest

from resnet_deploy import environment
from resnet_deploy.backends import doctor
from resnet_deploy.target import plan as deployplan


def arm_entry(features: str, implementer: str, part: str, variant: str = "0x0") -> str:
    """A first processor entry as an AArch64 kernel writes it: no model name, implementer and part numbers."""
    return (f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: {implementer}\n"
            f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: 1\n")


# the Features of real machines (Graviton2, Graviton3, a Raspberry Pi 4, QEMU's max model)
GRAVITON2 = arm_entry("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                      "asimddp ssbs", "0x41", "0xd0c", "0x3")
GRAVITON3 = arm_entry("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
                      "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp "
                      "svei8mm svebf16 i8mm bf16 dgh rng", "0x41", "0xd40", "0x1")
RASPBERRY_PI_4 = arm_entry("fp asimd evtstrm crc32 cpuid", "0x41", "0xd08")
QEMU_MAX = arm_entry("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
                     "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm sb paca pacg dcpodp sve2 "
                     "sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh bti",
                     "0x00", "0x051")
XEON_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
"""
XEON_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_vnni
"""
X86_WORDS = re.compile(r"AVX|VNNI|AMX|x86", re.IGNORECASE)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """``set(cpuinfo, machine)``: this process sees that /proc/cpuinfo on a ``platform.machine()`` of that name."""
    def set_machine(cpuinfo: str, arch: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo + "\nprocessor\t: 1\nFeatures\t: fp\nflags\t\t: fpu\n")
        monkeypatch.setattr(environment, "CPUINFO", str(path))
        monkeypatch.setattr(environment.platform, "machine", lambda: arch)
    return set_machine


@pytest.mark.parametrize("cpuinfo, model, isa, int8, has_bf16", [
    (GRAVITON2, "ARM Neoverse-N1 (Graviton2, Ampere Altra)", ["asimd", "asimddp"], "dotprod", False),
    (GRAVITON3, "ARM Neoverse-V1 (Graviton3)", ["asimd", "asimddp", "i8mm", "bf16", "sve"], "i8mm", True),
    (RASPBERRY_PI_4, "ARM Cortex-A72 (Raspberry Pi 4)", ["asimd"], "neon", False),
    (QEMU_MAX, "ARM CPU (implementer 0x00, part 0x051)", ["asimd", "asimddp", "i8mm", "bf16", "sve", "sve2"], "i8mm",
     True),
])
def test_arm_cpus_are_read_from_their_features(machine, cpuinfo, model, isa, int8, has_bf16):
    machine(cpuinfo, "aarch64")
    cpu = environment.cpu_description()
    assert (cpu["arch"], cpu["model"], cpu["isa"], cpu["int8_isa"]) == ("arm", model, isa, int8)
    # OpenVINO's CPU plugin has no bf16 on ARM, with or without the instructions: never "native", said why
    assert cpu["bf16"] != "native" and "not bf16" in cpu["bf16"]
    assert ("has bf16 instructions" in cpu["bf16"]) is has_bf16
    assert environment.int8_kernel_problem("vnni") is None  # ARM's INT8 kernels accumulate in int32
    assert not X86_WORDS.search(doctor_cpu_lines(cpu)), doctor_cpu_lines(cpu)


@pytest.mark.parametrize("cpuinfo, isa, int8", [(XEON_AVX2, ["avx2", "fma"], "avx2"),
                                                (XEON_VNNI, ["avx2", "fma", "avx512f", "avx512_vnni"], "vnni")])
def test_x86_cpus_are_read_from_their_flags(machine, cpuinfo, isa, int8):
    machine(cpuinfo, "x86_64")
    cpu = environment.cpu_description()
    assert (cpu["arch"], cpu["isa"], cpu["int8_isa"]) == ("x86", isa, int8)
    assert cpu["model"].startswith("Intel(R) Xeon(R)")
    assert "no native bf16" in cpu["bf16"]
    assert (environment.int8_kernel_problem("vnni") is None) is (int8 == "vnni")


def doctor_cpu_lines(cpu: dict) -> str:
    """doctor's cpu, int8 and bf16 lines for ``cpu``."""
    report = {"python": "3.11", "platform": "Linux", "cpu": cpu, "torch": {"version": None, "cuda": False,
              "reason": "not installed", "build": None}, "onnxruntime": {"version": "1", "providers": []},
              "cuda": {"cuda_python": None, "runtime": None, "driver": None, "problem": "none", "gpus": 0},
              "tensorrt": {"version": None}, "backends": {},
              **{name: {"version": None} for name in doctor.OPTIONAL_TOOLS}}
    lines = doctor.DoctorReport(report).to_text().splitlines()
    return "\n".join(line for line in lines if line.startswith(("cpu ", "int8 kernels", "bf16 ")))


def test_a_plan_applies_on_the_same_family_and_instruction_sets_only(machine):
    machine(GRAVITON2, "aarch64")
    graviton2 = deployplan.cpu_kind(environment.cpu_description())
    machine(GRAVITON3, "aarch64")
    assert deployplan.cpu_kind(environment.cpu_description()) != graviton2  # i8mm, bf16, SVE: other kernels
    machine(GRAVITON2.replace("CPU variant\t: 0x3", "CPU variant\t: 0x1"), "aarch64")
    assert deployplan.cpu_kind(environment.cpu_description()) == graviton2  # another stepping, the same kernels
    machine(XEON_AVX2, "x86_64")
    assert deployplan.cpu_kind(environment.cpu_description())["arch"] == "x86" != graviton2["arch"]


def test_doctor_names_this_machines_instruction_sets(cli):
    """On the machine the suite runs on (x86 here, aarch64 under emulation): its own family's words."""
    text = cli("doctor").stdout
    cpu_line = next(line for line in text.splitlines() if line.startswith("cpu "))
    family = environment.cpu_architecture()
    assert environment.cpu_description()["arch"] == family
    if family == "arm":
        assert not X86_WORDS.search(cpu_line) and "asimd" in cpu_line
    elif family == "x86":
        assert not re.search(r"asimd|neon|sve", cpu_line, re.IGNORECASE)
