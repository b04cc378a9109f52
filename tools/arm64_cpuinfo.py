"""Print the /proc/cpuinfo an AArch64 Linux kernel would show for the CPU this process runs on.

Run under qemu-user (QEMU_CPU picks the emulated model): qemu 7.2 passes the x86 host's /proc/cpuinfo through,
on which ONNX Runtime's CPU detection crashes and which no ARM code can read (and its /sys, which has no ARM
CPU's processor lists or MIDR: ``--sysfs FOLDER`` writes those). The entry is built from what the
emulated CPU itself reports: its HWCAPs (getauxval(AT_HWCAP), getauxval(AT_HWCAP2)), named as Linux's
arch/arm64/kernel/cpuinfo.c names them, and its MIDR_EL1 (read with one MRS instruction, which Linux and qemu
emulate for user space). Standard library only: it runs in a bare Debian root.
"""

from __future__ import annotations

import ctypes
import mmap
import os

AT_HWCAP, AT_HWCAP2 = 16, 26
# bit -> Features word, in Linux's order (arch/arm64/include/uapi/asm/hwcap.h)
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
         "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
          "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 sme_f16f32 sme_b16f32 "
          "sme_f32f32 sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1").split()
MRS_X0_MIDR_EL1_RET = (0xD5380000).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little")


def features() -> list[str]:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    words = []
    for names, kind in ((HWCAP, AT_HWCAP), (HWCAP2, AT_HWCAP2)):
        bits = libc.getauxval(kind)
        words += [name for bit, name in enumerate(names) if bits >> bit & 1]
    return words


def midr() -> int:
    """MIDR_EL1 from the instruction itself: a page of two instructions made executable and called."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(MRS_X0_MIDR_EL1_RET)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    value = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)()
    return value


def cpuinfo() -> str:
    value, flags = midr(), " ".join(features())
    entry = (f"BogoMIPS\t: 100.00\nFeatures\t: {flags}\nCPU implementer\t: {value >> 24 & 0xFF:#04x}\n"
             f"CPU architecture: 8\nCPU variant\t: {value >> 20 & 0xF:#x}\nCPU part\t: {value >> 4 & 0xFFF:#05x}\n"
             f"CPU revision\t: {value & 0xF}\n")
    return "".join(f"processor\t: {n}\n{entry}\n" for n in range(os.cpu_count() or 1))


def write_sysfs(folder: str) -> None:
    """What Linux shows under /sys/devices/system/cpu for this CPU: the processor lists, which PyTorch's cpuinfo
    library (inside ONNX Runtime) needs to start; each core's MIDR_EL1, which oneDNN (inside OpenVINO) reads; the
    topology and caches, without which OpenVINO's compile_model crashed (hwloc, under its TBB). qemu-user shows
    the host's /sys, which has none of them for an ARM CPU."""
    count, value = os.cpu_count() or 1, midr()
    all_cores = f"0-{count - 1}" if count > 1 else "0"
    write_files(folder, {"possible": all_cores, "present": all_cores, "online": all_cores})
    for n in range(count):
        write_files(os.path.join(folder, f"cpu{n}", "regs", "identification"), {"midr_el1": f"0x{value:016x}"})
        one, every = f"{1 << n:08x}", f"{(1 << count) - 1:08x}"  # a core alone, all cores: as bit masks
        write_files(os.path.join(folder, f"cpu{n}", "topology"), {
            "core_id": n, "physical_package_id": 0, "cluster_id": 0, "thread_siblings_list": n, "thread_siblings": one,
            "core_cpus_list": n, "core_cpus": one, "core_siblings_list": all_cores, "core_siblings": every,
            "package_cpus_list": all_cores, "package_cpus": every, "cluster_cpus_list": all_cores,
            "cluster_cpus": every})
        for index, (level, kind, size, shared) in enumerate(CACHES):
            write_files(os.path.join(folder, f"cpu{n}", "cache", f"index{index}"), {
                "level": level, "type": kind, "size": size, "coherency_line_size": 64, "ways_of_associativity": 4,
                "number_of_sets": int(size[:-1]) * 1024 // 64 // 4,
                "shared_cpu_list": n if shared == "core" else all_cores})


# the caches of a typical server core (Neoverse-N1's): level, type, size, shared by the core or by all
CACHES = ((1, "Data", "64K", "core"), (1, "Instruction", "64K", "core"), (2, "Unified", "1024K", "core"),
          (3, "Unified", "32768K", "all"))


def write_files(folder: str, values: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, value in values.items():
        with open(os.path.join(folder, name), "w") as handle:
            handle.write(f"{value}\n")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--sysfs"]:  # --sysfs FOLDER: the /sys/devices/system/cpu tree, written there
        write_sysfs(sys.argv[2])
    else:
        print(cpuinfo(), end="")
