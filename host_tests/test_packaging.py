"""Packaging: ``package.json`` (for ``mip`` / ``mpremote mip install``) and
``firmware/manifest.py`` (for freezing into a firmware build) describe exactly
``lib/rmota`` and carry the version of ``lib/rmota/__init__.py`` (STYLE.md: package.json
and manifest.py carry the same version).

The manifest is run here by a small recorder of the manifest functions it uses
(``metadata``, ``package``, ``module``, ``options``), following the semantics in the
MicroPython docs ("MicroPython manifest files"): paths relative to the manifest's
directory, ``package()`` takes every ``.py`` under ``base_path/package_path``.
``package.json`` is fed to mpremote's own installer code with a fake device."""

import ast
import json
import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_DIR = os.path.join(ROOT, "lib", "rmota")
MANIFEST = os.path.join(ROOT, "firmware", "manifest.py")
PACKAGE_JSON = os.path.join(ROOT, "package.json")


def _lib_modules():
    return sorted(f for f in os.listdir(PKG_DIR) if f.endswith(".py"))


def _version():
    with open(os.path.join(PKG_DIR, "__init__.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("no __version__ in lib/rmota/__init__.py")


class _Options:
    def __init__(self, **kw):
        self._kw = kw
        self._defaults = {}

    def defaults(self, **kw):
        self._defaults = kw

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._kw.get(name, self._defaults.get(name))


class ManifestRecorder:
    """Runs a manifest and records ``(target, source, opt)`` per file."""

    def __init__(self):
        self.meta = None
        self.files = []
        self.calls = []
        self._dir = None

    def run(self, path, **options):
        self._dir = os.path.dirname(os.path.abspath(path))
        g = {
            "metadata": self.metadata,
            "package": self.package,
            "module": self.module,
            "include": self.include,
            "require": self.require,
            "options": _Options(**options),
        }
        with open(path) as f:
            exec(compile(f.read(), path, "exec"), g)
        return self

    def _abs(self, p):
        return os.path.normpath(os.path.join(self._dir, p))

    def metadata(self, **kw):
        self.calls.append("metadata")
        if self.meta is not None:
            raise AssertionError("metadata() called twice")
        self.meta = kw

    def package(self, package_path, files=None, base_path=".", opt=None):
        self.calls.append("package")
        base = self._abs(base_path)
        top = os.path.join(base, package_path)
        if not os.path.isdir(top):
            raise AssertionError("package directory missing: %s" % top)
        if files is not None:
            for f in files:
                self.files.append((package_path + "/" + f, os.path.join(top, f), opt))
            return
        for dirpath, _, names in os.walk(top):
            for n in names:
                if n.endswith(".py"):
                    src = os.path.join(dirpath, n)
                    self.files.append((os.path.relpath(src, base), src, opt))

    def module(self, module_path, base_path=".", opt=None):
        self.calls.append("module")
        if not module_path.endswith(".py"):
            raise AssertionError("module must be a .py file")
        src = os.path.join(self._abs(base_path), module_path)
        if not os.path.isfile(src):
            raise AssertionError("module file missing: %s" % src)
        self.files.append((module_path, src, opt))

    def include(self, *a, **kw):
        raise AssertionError("rmota's manifest should not include other manifests")

    def require(self, *a, **kw):
        raise AssertionError("rmota has no micropython-lib dependencies")


def _package_json():
    with open(PACKAGE_JSON) as f:
        return json.load(f)


def test_version_is_the_same_everywhere():
    v = _version()
    assert v == "0.1.0"
    assert _package_json()["version"] == v
    assert ManifestRecorder().run(MANIFEST).meta["version"] == v


def test_manifest_freezes_exactly_lib_rmota():
    m = ManifestRecorder().run(MANIFEST)
    assert m.calls[0] == "metadata"  # MicroPython requires it first (compile mode)
    targets = sorted(t for t, _, _ in m.files)
    assert targets == ["rmota/" + f for f in _lib_modules()]
    for t, src, opt in m.files:
        assert os.path.samefile(src, os.path.join(ROOT, "lib", t))
        assert opt == 3


def test_manifest_board_option_freezes_the_profile():
    m = ManifestRecorder().run(MANIFEST, board="esp32", opt=1)
    extra = [(t, s) for t, s, _ in m.files if not t.startswith("rmota/")]
    assert len(extra) == 1
    assert extra[0][0] == "board.py"
    assert os.path.samefile(extra[0][1], os.path.join(ROOT, "boards", "esp32", "board.py"))
    assert {o for _, _, o in m.files} == {1}


def test_package_json_lists_every_file():
    d = _package_json()
    urls = d["urls"]
    dests = [u[0] for u in urls]
    assert len(dests) == len(set(dests)), "duplicate destinations"
    missing = sorted(set("rmota/" + f for f in _lib_modules()) - set(dests))
    assert not missing, "add to package.json urls: %s" % missing
    assert sorted(dests) == ["rmota/" + f for f in _lib_modules()]
    for dest, src in urls:
        # Relative URLs: mip resolves them against package.json's location (a local
        # path or github:owner/repo), so the same file serves both.
        assert src == "lib/" + dest
        assert os.path.isfile(os.path.join(ROOT, src)), src
    assert d.get("deps", []) == []


class _FakeDeviceFS:
    """Just enough of mpremote's ``Transport`` file API for ``mip install``."""

    def __init__(self):
        self.dirs = {""}
        self.files = {}

    def fs_exists(self, path):
        return path in self.dirs or path in self.files

    def fs_mkdir(self, path):
        self.dirs.add(path)

    def fs_writefile(self, dest, data, chunk_size=256, progress_callback=None):
        parent = dest.rsplit("/", 1)[0]
        assert parent in self.dirs, "parent of %s not created" % dest
        self.files[dest] = bytes(data)


def test_mpremote_mip_installs_package_json_from_a_local_path(capsys):
    """``mpremote mip install ./package.json`` reads a local package.json and resolves
    its relative URLs against its directory (mpremote/mip.py); here with a fake device
    filesystem and mpremote's own installer function."""
    import mpremote.mip as mip  # in requirements.txt: never skipped

    dev = _FakeDeviceFS()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        mip._install_package(dev, "./package.json", mip._PACKAGE_INDEX, "/lib", None, True)
    finally:
        os.chdir(cwd)
    assert "/lib" in dev.dirs and "/lib/rmota" in dev.dirs
    assert sorted(dev.files) == ["/lib/rmota/" + f for f in _lib_modules()]
    for f in _lib_modules():
        with open(os.path.join(PKG_DIR, f), "rb") as src:
            assert dev.files["/lib/rmota/" + f] == src.read()
