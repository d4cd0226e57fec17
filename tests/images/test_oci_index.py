"""The multi-arch OCI index (issue 6, "Container image"): amd64 and arm64 in one archive.

Slow (the arm64 binary is built under qemu-user), so it runs under `./justw image-test`:
`./justw image-oci all` builds both arches' images and `dist/edgegw.oci.tar`, whose index
skopeo must resolve to each platform's manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INDEX = REPO_ROOT / "dist" / "edgegw.oci.tar"
BUILD_TIMEOUT = 3600.0


def _skopeo(*args: str) -> Any:
    done = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"skopeo {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout)


def test_the_multi_arch_index_resolves_each_platform() -> None:
    if os.geteuid() != 0 or shutil.which("skopeo") is None:
        reason = "needs root and skopeo (./justw image-test installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(reason)
        pytest.skip(reason)
    done = subprocess.run(
        [str(REPO_ROOT / "justw"), "image-oci", "all"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"./justw image-oci all failed:\n{done.stderr[-6000:]}"
    raw = _skopeo("inspect", "--raw", f"oci-archive:{INDEX}")
    platforms = {
        (m["platform"]["architecture"], m["platform"].get("variant")) for m in raw["manifests"]
    }
    assert platforms == {("amd64", None), ("arm64", "v8")}
    for arch in ("amd64", "arm64"):
        inspected = _skopeo("--override-arch", arch, "inspect", f"oci-archive:{INDEX}")
        assert inspected["Architecture"] == arch
        assert inspected["Os"] == "linux"
