"""Data Docs that render without internet access.

GX's page templates load jQuery, Bootstrap, bootstrap-table, Font Awesome, vega and more from
CDNs: offline, the index's list of validation runs (drawn by bootstrap-table) is blank and the
validation pages lose their styling and pass/fail icons. `scripts/setup.sh` fetches the same
files once from their npm packages (`python -m expectations.offline_docs fetch`), and
`localize(site)` copies them into the Data Docs site and points every page at the copies, so
the site also works when copied elsewhere or opened as file://."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

VENDOR_DIR = Path(__file__).resolve().parents[1] / ".lklab" / "web"  # shared by every LKLAB_HOME, like the jars
SITE_VENDOR = Path("static") / "vendor"  # where a site keeps its copies

# Each CDN URL in GX's templates -> (the npm package@version it serves, the file in that package).
# Versions are the templates' own; where a template names only a major version, the latest of it.
ASSETS: dict[str, tuple[str, str]] = {
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery@3.7.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": ("popper.js@1.12.9", "dist/umd/popper.min.js"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": ("bootstrap@4.3.1", "dist/js/bootstrap.min.js"),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": ("bootstrap@4.3.1", "dist/css/bootstrap.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": ("bootstrap-table@1.19.1", "dist/bootstrap-table.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": ("bootstrap-table@1.19.1", "dist/bootstrap-table.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        ("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        ("bootstrap-table@1.19.0", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        ("bootstrap-table@1.19.0", "dist/extensions/filter-control/bootstrap-table-filter-control.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        ("bootstrap-datepicker@1.9.0", "dist/js/bootstrap-datepicker.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        ("bootstrap-datepicker@1.9.0", "dist/css/bootstrap-datepicker.min.css"),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        ("@forevolve/bootstrap-dark@1.1.0", "dist/css/bootstrap-prefers-dark.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": ("@fortawesome/fontawesome-free@6.6.0", "css/all.min.css"),
    "https://cdn.jsdelivr.net/npm/vega@5": ("vega@5.33.1", "build/vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": ("vega-lite@5.23.0", "build/vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": ("vega-embed@6.29.0", "build/vega-embed.min.js"),
}
# Files the assets load themselves, by a path relative to their own (Font Awesome's ../webfonts/).
SUPPORT: list[tuple[str, str]] = [("@fortawesome/fontawesome-free@6.6.0", "webfonts")]
# The navbar logo: GX's templates fetch it from the web, and the site holds the same image.
LOGO_URL = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"

log = logging.getLogger(__name__)
_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>", re.IGNORECASE | re.DOTALL)
# A relative link into the site's static/ (GX puts the favicon of validation pages one level short).
_SITE_STATIC = re.compile(r"""((?:src|href)=["'])(?:\./|(?:\.\./)+)static/""", re.IGNORECASE)
_SRI = re.compile(r"""\s+(?:integrity|crossorigin)=(?:"[^"]*"|'[^']*'|\S+)""", re.IGNORECASE)


def packages() -> list[str]:
    return sorted({package for package, _ in (*ASSETS.values(), *SUPPORT)})


def fetch(into: Path = VENDOR_DIR) -> None:
    """Unpack each npm package the templates need under `into` (skipping those already there)."""
    for package in packages():
        target = into / package
        if target.is_dir():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            packed = subprocess.run(["npm", "pack", "--silent", "--pack-destination", tmp, package],
                                    capture_output=True, text=True, check=False)
            tarballs = list(Path(tmp).glob("*.tgz"))
            if packed.returncode or not tarballs:
                raise RuntimeError(f"npm pack {package} failed: {(packed.stderr.strip().splitlines() or ['no tarball'])[-1]}")
            with tarfile.open(tarballs[0]) as tar:
                tar.extractall(Path(tmp) / "x", filter="data")
            [root] = (Path(tmp) / "x").iterdir()  # "package/" in most tarballs, not all
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(root), target)


def missing(source: Path = VENDOR_DIR) -> list[str]:
    return [f"{package}/{path}" for package, path in (*ASSETS.values(), *SUPPORT) if not (source / package / path).exists()]


def localize(site: Path, source: Path = VENDOR_DIR) -> bool:
    """Copy the assets into `site` and point its pages at them; False (pages unchanged) if the
    assets were never fetched."""
    absent = missing(source)
    if absent:
        log.warning("Data Docs keep their CDN links (they render blank offline): %s not fetched; run scripts/setup.sh",
                    ", ".join(absent))
        return False
    for package, path in (*ASSETS.values(), *SUPPORT):
        _copy(source / package / path, site / SITE_VENDOR / package / path)
    # Only pages written since the last pass: a gate updates a page or two, the site grows with
    # every run, and rewriting all of it made each gate slower than the one before.
    stamp = site / SITE_VENDOR / ".localized"
    since = stamp.stat().st_mtime_ns if stamp.exists() else -1
    began = time.time_ns() - 2_000_000_000  # file times come from a coarse clock: keep a margin
    for page in site.rglob("*.html"):
        if page.stat().st_mtime_ns < since:
            continue
        text = page.read_text(encoding="utf-8")
        local = _rewrite(text, Path(os.path.relpath(site, page.parent)).as_posix())
        if local != text:
            page.write_text(local, encoding="utf-8")
    stamp.touch()
    os.utime(stamp, ns=(began, began))  # a page written while this pass ran is looked at again next time
    return True


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _rewrite(html: str, to_site: str) -> str:
    """Every known CDN reference in a <script>, <link> or <img> tag -> the site's copy, and every
    link into the site's static/ -> the right depth. Integrity and crossorigin go with a CDN
    reference: a file:// page cannot make the CORS request they ask for."""
    def local(match: re.Match) -> str:
        tag = match.group(0)
        for url, (package, path) in ASSETS.items():
            for quote in ('"', "'"):
                if f"{quote}{url}{quote}" in tag:
                    tag = _SRI.sub("", tag.replace(f"{quote}{url}{quote}", f"{quote}{to_site}/{SITE_VENDOR.as_posix()}/{package}/{path}{quote}"))
        tag = tag.replace(LOGO_URL, f"{to_site}/static/images/")
        return _SITE_STATIC.sub(rf"\1{to_site}/static/", tag)
    return _TAG.sub(local, html)


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        fetch()
    elif sys.argv[1:] == ["packages"]:
        print("\n".join(packages()))
    else:
        sys.exit("usage: python -m expectations.offline_docs fetch | packages")
