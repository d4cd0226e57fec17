"""Boot a disk image under qemu with UEFI firmware for the image tests: x86_64 on
qemu-system-x86_64 (q35, OVMF), aarch64 on qemu-system-aarch64 (virt, a Cortex-A72, AAVMF).

The machine has the image as a virtio disk, its first UART (ttyS0 on x86_64, the PL011
ttyAMA0 on aarch64) written to a file, and user-mode networking (guest side 203.0.113.0/24)
whose host side is a network namespace of its own with nothing but loopback: port SIP_PORT
on that namespace's 127.0.0.1 is forwarded to the guest's SIP port 5060 (UDP and TCP),
SSH_PORT to its SSH port 22, and nothing the guest sends can leave the machine (its NTP and
DNS find no route). qemu's own `restrict=on` would isolate it too, but it also drops the
guest's UDP answers to forwarded ports (libslirp 4.7 lets only TCP through), so SIP over
UDP could not be checked. Tests talk to the guest from a thread inside the namespace
(`Namespace.entered()`).

KVM is used when it really runs a guest (a short probe boots the firmware with it: the build
machines' nested KVM opens and makes VMs, then fails at the first instruction), else TCG,
software emulation; $EDGEGW_QEMU_ACCEL (kvm or tcg) skips the probe. A guest of another
architecture than the host's always runs under TCG. Every run has a time limit: `stop()`
asks for an ACPI power-off over QMP and kills qemu when it does not end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from images.binary.rootfs import host_arch
from tests.integration.netns import Namespace

__all__ = [
    "MACHINES",
    "OVMF_CODE",
    "OVMF_VARS",
    "QEMU",
    "SIP_PORT",
    "SSH_PORT",
    "BootedMachine",
    "MachineKind",
    "boot",
    "choose_accel",
    "kvm_usable",
    "missing",
]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class MachineKind:
    """What qemu needs to boot one architecture's image: the emulator, the machine type,
    the CPU under TCG, the UEFI firmware (code read-only, a copy of the variable store for
    each boot; both pflash images) and the Debian packages that provide them."""

    qemu: str
    machine: str
    tcg_cpu: str
    firmware_code: Path
    firmware_vars: Path
    packages: str


MACHINES = {
    "x86_64": MachineKind(QEMU, "q35", "max", OVMF_CODE, OVMF_VARS, "qemu-system-x86 ovmf"),
    # virt: the machine type made for guests (virtio on PCIe, PL011, ACPI power button).
    # A Cortex-A72 rather than `max`: max adds pointer authentication, whose emulation is
    # slow under TCG, and nothing here needs ARMv8.3 and later.
    "aarch64": MachineKind(
        "qemu-system-aarch64",
        "virt",
        "cortex-a72",
        Path("/usr/share/AAVMF/AAVMF_CODE.fd"),
        Path("/usr/share/AAVMF/AAVMF_VARS.fd"),
        "qemu-system-arm qemu-efi-aarch64",
    ),
}


def missing(arch: str) -> str | None:
    """What the host lacks to boot `arch` (naming the Debian packages), or None."""
    kind = MACHINES[arch]
    absent = [str(p) for p in (kind.firmware_code, kind.firmware_vars) if not p.is_file()]
    if shutil.which(kind.qemu) is None:
        absent.append(kind.qemu)
    if absent:
        return f"missing {', '.join(absent)} (Debian: {kind.packages})"
    return None


# The forwarded ports on the namespace's loopback (a fresh namespace: always free).
SIP_PORT = 5060
SSH_PORT = 2222
# The guest's side of user-mode networking: a documentation network (the default is
# 10.0.2.0/24), with the DHCP server and gateway at .2 and the guest leased .15.
GUEST_NET = "net=203.0.113.0/24,host=203.0.113.2,dns=203.0.113.3,dhcpstart=203.0.113.15"

_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01


def kvm_opens() -> bool:
    """True when /dev/kvm answers and lets us create a virtual machine."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, _KVM_GET_API_VERSION) != 12:
            return False
        vm = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
        os.close(vm)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def kvm_usable(workdir: Path, timeout: float = 20.0, arch: str = "x86_64") -> bool:
    """True when the firmware, booted with KVM, writes to its serial console in `timeout`
    (never for a guest of another architecture than the host's)."""
    if arch != host_arch() or not kvm_opens():
        return False
    kind = MACHINES[arch]
    vars_copy = workdir / "probe-vars.fd"
    serial = workdir / "probe-serial.log"
    shutil.copyfile(kind.firmware_vars, vars_copy)
    serial.write_bytes(b"")
    command = [
        kind.qemu,
        *("-machine", f"{kind.machine},accel=kvm", "-cpu", "host", "-m", "256", "-nodefaults"),
        *("-display", "none", "-no-reboot", "-serial", f"file:{serial}"),
        *("-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={kind.firmware_code}"),
        *("-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if serial.stat().st_size > 0:
                return True
            time.sleep(0.5)
        return False
    finally:
        process.kill()
        process.wait(10)
        vars_copy.unlink()
        serial.unlink()


def choose_accel(workdir: Path, arch: str = "x86_64") -> str:
    """kvm or tcg: tcg for a foreign `arch`, else $EDGEGW_QEMU_ACCEL when set, else what
    the probe finds."""
    if arch != host_arch():
        return "tcg"
    chosen = os.environ.get("EDGEGW_QEMU_ACCEL", "")
    if chosen in ("kvm", "tcg"):
        return chosen
    return "kvm" if kvm_usable(workdir, arch=arch) else "tcg"


@dataclass
class BootedMachine:
    """A running qemu: its process, serial log, QMP socket, the namespace it runs in (where
    127.0.0.1:SIP_PORT reaches the guest's SIP) and the accelerator in use."""

    process: subprocess.Popen[bytes]
    serial_log: Path
    qmp_path: Path
    namespace: Namespace
    accel: str
    started: float = field(default_factory=time.monotonic)

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_serial(self, marker: str, timeout: float) -> str:
        """Wait until the serial log holds `marker`; the log. TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.serial()
            if marker in text:
                return text
            if not self.alive():
                break
            time.sleep(1.0)
        raise TimeoutError(f"{marker!r} not on the serial console within {timeout:g} s")

    def powerdown(self) -> None:
        """Ask the guest to power off (ACPI power button over QMP)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.qmp_path))
            reader = sock.makefile("rb")
            reader.readline()  # greeting
            for command in ("qmp_capabilities", "system_powerdown"):
                sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while b'"return"' not in (line := reader.readline()):
                    if not line:
                        return

    def stop(self, timeout: float = 120.0) -> int | None:
        """Power off cleanly within `timeout`, else kill; qemu's exit code (None if killed)."""
        if self.alive():
            with contextlib.suppress(OSError):
                self.powerdown()
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                # timeout(1) passes SIGTERM on to qemu; killing it would leave qemu behind.
                self.process.terminate()
                try:
                    self.process.wait(20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
                return None
        return self.process.returncode


@contextlib.contextmanager
def boot(
    image: Path,
    workdir: Path,
    namespace: Namespace,
    *,
    memory_mib: int = 1024,
    cpus: int = 2,
    limit: float = 1800.0,
    arch: str = "x86_64",
) -> Iterator[BootedMachine]:
    """Boot `image` (booted in place: pass a copy), an image of `arch`, with its network in
    `namespace`, and stop the machine on the way out.

    `limit` bounds qemu's whole life (timeout(1) kills it), whatever happens to the test."""
    kind = MACHINES[arch]
    absent = missing(arch)
    if absent is not None:
        raise FileNotFoundError(absent)
    vars_copy = workdir / "firmware-vars.fd"
    shutil.copyfile(kind.firmware_vars, vars_copy)
    serial_log = workdir / "serial.log"
    qmp_path = workdir / "qmp.sock"
    accel = choose_accel(workdir, arch)
    forward = (
        f"hostfwd=udp:127.0.0.1:{SIP_PORT}-:5060,hostfwd=tcp:127.0.0.1:{SIP_PORT}-:5060,"
        f"hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22"
    )
    command = [
        "timeout",
        "--signal=KILL",
        str(int(limit)),
        kind.qemu,
        "-machine",
        f"{kind.machine},accel={accel}",
        "-cpu",
        "host" if accel == "kvm" else kind.tcg_cpu,
        "-smp",
        str(cpus),
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={kind.firmware_code}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={vars_copy}",
        "-drive",
        f"if=virtio,format=raw,file={image}",
        "-netdev",
        f"user,id=n0,{GUEST_NET},{forward}",
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,addr=0x6",
        "-device",
        "virtio-rng-pci",
        "-chardev",
        f"file,id=serial0,path={serial_log}",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{qmp_path},server=on,wait=off",
        "-no-reboot",
    ]
    log = (workdir / "qemu.log").open("wb")
    process = namespace.popen(command, stdout=log, stderr=subprocess.STDOUT)
    machine = BootedMachine(process, serial_log, qmp_path, namespace, accel)
    try:
        yield machine
    finally:
        machine.stop()
        log.close()
