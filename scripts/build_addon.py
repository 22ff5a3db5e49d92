"""Build the installable extension zip: dist/scene_diffusion-VERSION.zip.

Equivalent to `blender --command extension build` (which needs a Blender binary): the manifest at the
zip's root, every source file of blender_addon/ beside it, caches excluded. Install it in Blender with
Edit > Preferences > Get Extensions > Install from Disk.
"""

from __future__ import annotations

import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON = ROOT / "blender_addon"
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache"}


def build(out_dir: Path = ROOT / "dist") -> Path:
    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text())
    for key in ("schema_version", "id", "version", "name", "tagline", "maintainer", "type", "blender_version_min",
                "license"):
        if key not in manifest:
            raise SystemExit(f"blender_manifest.toml lacks '{key}'")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    partial = target.with_suffix(".zip.part")
    files = sorted(p for p in ADDON.rglob("*") if p.is_file() and not EXCLUDED_PARTS & set(p.parts)
                   and p.suffix not in (".pyc", ".pyo"))
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(ADDON).as_posix())
    partial.replace(target)
    return target


if __name__ == "__main__":
    path = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist")
    print(path)
