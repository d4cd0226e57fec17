# edgegw recipes. Run them through ./justw, which installs what they need.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Start the gateway in the foreground on the embedded loopback demo.
run *ARGS:
    edgegw run {{ARGS}}

# Lint and type-check, then run every test (unit and integration).
test: lint
    python -m pytest -q tests/unit tests/integration

# Static checks: ruff and mypy.
lint:
    ruff check gateway tests native images
    ruff format --check gateway tests native images
    mypy
    mypy --explicit-package-bases images

# Benchmarks (figures, not pass/fail).
bench:
    python -m tests.bench.run_all

# Single binary dist/edgegw-ARCH (x86_64 | aarch64; aarch64 is built under qemu-user).
binary ARCH:
    python images/binary/build.py {{ARCH}}

# The slow image checks (arm64 under qemu-user): each binary built and run in a Python-less root.
image-test:
    python images/binary/build.py x86_64
    python images/binary/check.py x86_64
    python images/binary/build.py aarch64
    python images/binary/check.py aarch64
    just image-disk x86_64
    just image-disk aarch64
    python images/update/build.py x86_64
    python images/update/build.py aarch64
    python -m pytest -q --durations=0 tests/images

# Flashable disk image dist/edgegw-ARCH.img and .img.zst (x86_64 | aarch64): GPT with an ESP
# (systemd-boot, boot counting), read-only root slots A and B, a data partition.
image-disk ARCH:
    just binary {{ARCH}}
    python images/disk/build.py {{ARCH}}

# Provision a disk image (or a flashed disk) before its first boot: a config and root's SSH
# public keys go into its ESP's provision/ folder, checked here and again on the box, which
# moves them to its data partition at boot. TARGET: dist/edgegw-ARCH.img or /dev/sdX.
image-provision TARGET *ARGS:
    python images/disk/provision.py {{TARGET}} {{ARGS}}

# Update bundle dist/edgegw-ARCH.update for `edgegw upgrade`: the disk image's root, kernel and
# initrd with a manifest signed with ed25519 ($EDGEGW_SIGNING_KEY, else a development key made
# once under .cache/images/; the image carries the matching public key).
image-update ARCH:
    just image-disk {{ARCH}}
    python images/update/build.py {{ARCH}}

# OCI image dist/edgegw-ARCH.oci.tar (x86_64 | aarch64 | all) from dist/edgegw-ARCH (the
# binary recipe rebuilds it only when stale); once both arches' images exist, also the
# multi-arch index dist/edgegw.oci.tar.
image-oci ARCH:
    #!/usr/bin/env bash
    set -euo pipefail
    case "{{ARCH}}" in
        all) arches=(x86_64 aarch64) ;;
        x86_64|aarch64) arches=("{{ARCH}}") ;;
        *) echo "image-oci: ARCH is x86_64, aarch64 or all, not {{ARCH}}" >&2; exit 2 ;;
    esac
    for arch in "${arches[@]}"; do
        just binary "$arch"
        python images/oci/build.py image --arch "$arch" --binary "dist/edgegw-$arch" \
            --out "dist/edgegw-$arch.oci.tar"
    done
    if [ -f dist/edgegw-x86_64.oci.tar ] && [ -f dist/edgegw-aarch64.oci.tar ]; then
        python images/oci/build.py index --out dist/edgegw.oci.tar \
            dist/edgegw-x86_64.oci.tar dist/edgegw-aarch64.oci.tar
    fi
