#!/usr/bin/env bash
# Release check (`make wheel-check`, run by .ci/run): does nxstore install and work the way a
# user gets it, without this source tree?
#   1. `python -m build`: the sdist, then the wheel built FROM that sdist (so a file the sdist
#      lacks, e.g. a native/ header, fails the compile here rather than at a user's site).
#   2. the wheel holds every nxstore/**/*.py of the tree and the extension nxstore._native.
#   3. a brand-new venv outside the tree gets the wheel (dependencies from the index); from a
#      temporary cwd, so the tree is not importable, it imports every nxstore module, runs both
#      demos, and a CLI round trip through the installed `nxstore` script: create, vdisk
#      create, import, snapshot create, a write after the snapshot, export of the vDisk and of
#      the snapshot compared byte for byte with their images, scrub, info --json.
# Any failure exits non-zero. PY (default .venv/bin/python, which has `build`) runs the build;
# PYTHON (default python3) makes the fresh venv. NXSTORE_KEEP_TMP=1 keeps the work directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
PYTHON=${PYTHON:-python3}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nxstore-wheel-check.XXXXXX")
cleanup() {
  local rc=$?
  if [ "${NXSTORE_KEEP_TMP:-0}" = 1 ] || [ $rc != 0 ]; then
    echo "wheel-check: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
step() { echo "wheel-check: $*"; }
fail() { echo "wheel-check: FAILED: $*" >&2; exit 1; }

step "building the sdist and, from it, the wheel"
"$PY" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "python -m build (log above)"; }
sdists=("$WORK"/dist/nxstore-*.tar.gz)
wheels=("$WORK"/dist/nxstore-*.whl)
[ ${#sdists[@]} = 1 ] && [ -f "${sdists[0]}" ] || fail "expected one sdist in $WORK/dist"
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || fail "expected one wheel in $WORK/dist"
step "built $(basename "${sdists[0]}") and $(basename "${wheels[0]}")"

step "comparing the wheel with the source tree"
"$PY" - "${wheels[0]}" "$ROOT" <<'EOF' || fail "the wheel does not hold the whole package"
import pathlib, re, sys, zipfile

wheel, root = sys.argv[1], pathlib.Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
sources = {p.relative_to(root).as_posix() for p in (root / "nxstore").rglob("*.py")
           if "__pycache__" not in p.parts}
missing = sorted(sources - names)
for name in missing:
    print(f"  missing from the wheel: {name}", file=sys.stderr)
if not any(re.fullmatch(r"nxstore/_native\..*so", n) for n in names):
    print("  missing from the wheel: the extension nxstore/_native.*.so", file=sys.stderr)
    missing.append("_native")
sys.exit(1 if missing else 0)
EOF

step "installing the wheel into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
VPY=$WORK/venv/bin/python
"$VPY" -m pip install --disable-pip-version-check -q "${wheels[0]}" >"$WORK/install.log" 2>&1 \
  || { tail -40 "$WORK/install.log" >&2; fail "pip install of the wheel (log above)"; }

# From here on: cwd outside the tree, no PYTHONPATH, only the venv's own nxstore.
mkdir "$WORK/run"
cd "$WORK/run"
unset PYTHONPATH
export PATH="$WORK/venv/bin:$PATH"

step "importing every nxstore module from the venv"
"$VPY" - "$WORK/venv" <<'EOF' || fail "import from the installed wheel"
import importlib, os, pkgutil, sys

import nxstore
import nxstore._native

venv = os.path.realpath(sys.argv[1])
if not os.path.realpath(nxstore.__file__).startswith(venv + os.sep):
    sys.exit(f"nxstore was imported from {nxstore.__file__}, not from the venv")
count = 0
for mod in pkgutil.walk_packages(nxstore.__path__, "nxstore."):
    if not mod.name.endswith(".__main__"):  # that one runs the CLI
        importlib.import_module(mod.name)
        count += 1
print(f"  {count} modules import; nxstore._native from {os.path.basename(nxstore._native.__file__)}")
EOF
command -v nxstore | grep -qx "$WORK/venv/bin/nxstore" || fail "the nxstore script is not in the venv"
nxstore --version

step "running the two-site demo (python -m nxstore.demo)"
"$VPY" -m nxstore.demo >"$WORK/demo.log" 2>&1 || { tail -40 "$WORK/demo.log" >&2; fail "the demo"; }
tail -1 "$WORK/demo.log"
step "running the single-site demo (python -m nxstore.demo --single-site)"
"$VPY" -m nxstore.demo --single-site --path single-site >"$WORK/demo1.log" 2>&1 \
  || { tail -40 "$WORK/demo1.log" >&2; fail "the single-site demo"; }
grep -m1 "demo OK" "$WORK/demo1.log"

step "CLI round trip through the installed nxstore script"
# An image with data, a hole and a compressible stretch; then a write after the snapshot.
"$VPY" - <<'EOF'
import random

rnd = random.Random(12)
mib = 1 << 20
with open("disk.img", "wb") as f:
    f.write(rnd.randbytes(3 * mib))
    f.seek(5 * mib)
    f.write(b"nxstore" * (mib // 7))
    f.truncate(8 * mib)
with open("patch.bin", "wb") as f:
    f.write(rnd.randbytes(256 * 1024))
EOF
run() { echo "  \$ nxstore $*"; nxstore "$@" || fail "nxstore $* exited $?"; }
run create cl
run vdisk create cl vm1 8M
run import cl vm1 disk.img
run snapshot create cl vm1 before
cp disk.img after.img
dd if=patch.bin of=after.img bs=64K seek=16 conv=notrunc status=none
run import cl vm1 after.img
run export cl vm1@before out-before.img
run export cl vm1 out-after.img
cmp disk.img out-before.img || fail "the snapshot does not read back the imported image"
cmp after.img out-after.img || fail "the vDisk does not read back the second image"
cmp -s disk.img after.img && fail "the test images are equal; the snapshot check proves nothing"
run scrub cl
nxstore info cl --json | "$VPY" -c 'import json, sys; json.load(sys.stdin)' \
  || fail "nxstore info --json"
step "OK: sdist, wheel, install, import, demos and CLI round trip"
