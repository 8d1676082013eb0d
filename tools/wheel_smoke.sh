#!/usr/bin/env bash
# Builds the wheel (pip wheel and python -m build) and the sdist, checks that the wheel holds only
# the package and its dist-info, installs it into a fresh venv with the same torch and no source
# tree, and smoke-tests it there. Used by CI; run from an environment where the package builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
rm -rf dist && mkdir -p dist
t0=$(date +%s)
$PY -m pip wheel . --no-build-isolation --no-deps -q -w dist
echo "wheel_smoke: pip wheel took $(( $(date +%s) - t0 )) s"
$PY -m build --wheel --no-isolation --outdir dist/build >/dev/null
$PY -m build --sdist --no-isolation --outdir dist >/dev/null
whl=$(ls dist/*.whl)
ls dist/build/*.whl dist/*.tar.gz
$PY - "$whl" <<'PYEOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
bad = [n for n in names if not (n.startswith("flashattn_lite/") or n.startswith("flashattn_lite-"))]
assert not bad, f"unexpected files in the wheel: {bad}"
assert any(n.startswith("flashattn_lite/_C") and n.endswith(".so") for n in names), names
assert "flashattn_lite/_build_config.py" in names, names
assert "flashattn_lite/py.typed" in names, names  # typed package (PEP 561)
print(f"wheel_smoke: {len(names)} files, package + dist-info only")
PYEOF
torch_version=$($PY -c "import torch; print(torch.__version__.split('+')[0])")
work=$(mktemp -d)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "torch==$torch_version"
"$work/venv/bin/pip" install -q "$whl"
cd "$work"
"$work/venv/bin/python" - <<'PYEOF'
import torch, flashattn_lite as fal
from flashattn_lite.reference import attention_ref
assert "site-packages" in fal.__file__, fal.__file__
print("wheel_smoke:", fal.build_info(), fal.cpu_isa())
for dt in (torch.float32, torch.bfloat16):
    q, k, v = (torch.randn(2, 77, 4, 40, dtype=dt, requires_grad=True) for _ in range(3))
    out = fal.flash_attn_func(q, k, v, causal=True)
    ref, _ = attention_ref(q.detach(), k.detach(), v.detach(), causal=True)
    err = (out.double() - ref).abs().max().item()
    assert err < (1e-5 if dt == torch.float32 else 3e-2), (dt, err)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
print("wheel_smoke: fresh venv import + fwd/bwd ok")
PYEOF
rm -rf "$work"
