"""A minimal PEP 517 / PEP 660 build backend for one pure-Python package.

Why it exists: the client must install with `pip install ./clients/python`
on machines that reach no Python package index. setuptools' backend needs the
`wheel` distribution to build a wheel, and build isolation would download
setuptools itself; this backend uses the standard library only and declares no
build requirements, so pip never has to fetch anything.

It reads [project] from pyproject.toml and ships the package directory named
by [tool.eventbus-build] package. It does not try to be general.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tomllib
import zipfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A fixed timestamp keeps archives byte-identical across builds.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}


def _project() -> dict:
    with open(os.path.join(_ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)
    project = data["project"]
    project["_package"] = data["tool"]["eventbus-build"]["package"]
    return project


def _dist_name(project: dict) -> str:
    return project["name"].replace("-", "_")


def _metadata(project: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '')}",
    ]
    license_ = project.get("license", {})
    if isinstance(license_, dict) and "text" in license_:
        lines.append(f"License: {license_['text']}")
    for dep in project.get("dependencies", []):
        lines.append(f"Requires-Dist: {dep}")
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for dep in deps:
            lines.append(f'Requires-Dist: {dep}; extra == "{extra}"')
    readme = project.get("readme")
    body = ""
    if readme:
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(_ROOT, readme), encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _package_files(project: dict) -> list[str]:
    """Paths relative to _ROOT of every file in the package, sorted."""
    out = []
    top = os.path.join(_ROOT, project["_package"])
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            out.append(os.path.relpath(os.path.join(dirpath, name), _ROOT))
    return out


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"{arcname},sha256={digest.decode()},{len(data)}"


def _write_dist_info(project: dict, directory: str) -> str:
    name = f"{_dist_name(project)}-{project['version']}.dist-info"
    path = os.path.join(directory, name)
    os.makedirs(path, exist_ok=True)
    for fname, text in _dist_info_files(project).items():
        with open(os.path.join(path, fname), "w", encoding="utf-8") as f:
            f.write(text)
    return name


def _dist_info_files(project: dict) -> dict[str, str]:
    return {
        "METADATA": _metadata(project),
        "WHEEL": (
            "Wheel-Version: 1.0\n"
            "Generator: eventbus_build\n"
            "Root-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }


def _build(wheel_directory: str, files: dict[str, bytes]) -> str:
    project = _project()
    dist = _dist_name(project)
    version = project["version"]
    dist_info = f"{dist}-{version}.dist-info"
    wheel_name = f"{dist}-{version}-py3-none-any.whl"
    for fname, text in _dist_info_files(project).items():
        files[f"{dist_info}/{fname}"] = text.encode("utf-8")
    record = [_record_line(arc, data) for arc, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode("utf-8")
    os.makedirs(wheel_directory, exist_ok=True)
    with zipfile.ZipFile(
        os.path.join(wheel_directory, wheel_name), "w", zipfile.ZIP_DEFLATED
    ) as zf:
        for arc, data in files.items():
            info = zipfile.ZipInfo(arc, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return wheel_name


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    return _write_dist_info(_project(), metadata_directory)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    return _write_dist_info(_project(), metadata_directory)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = _project()
    files = {}
    for rel in _package_files(project):
        with open(os.path.join(_ROOT, rel), "rb") as f:
            files[rel.replace(os.sep, "/")] = f.read()
    return _build(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    # PEP 660: a .pth file puts the source tree on sys.path.
    project = _project()
    pth = f"{_dist_name(project)}.pth"
    return _build(wheel_directory, {pth: (_ROOT + "\n").encode("utf-8")})


def build_sdist(sdist_directory, config_settings=None):
    project = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    rels = ["pyproject.toml", "_build_backend/eventbus_build.py"]
    if project.get("readme"):
        rels.append(project["readme"])
    rels += _package_files(project)
    os.makedirs(sdist_directory, exist_ok=True)
    name = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tf:
        for rel in rels:
            tf.add(os.path.join(_ROOT, rel), arcname=f"{base}/{rel}")
        pkg_info = _metadata(project).encode("utf-8")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        info.size = len(pkg_info)
        tf.addfile(info, io.BytesIO(pkg_info))
    return name
