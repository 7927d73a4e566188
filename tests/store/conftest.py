"""Engine tests. Being a conftest puts this directory on sys.path (pytest's prepend import
mode), so the helpers here (crash_child, native_reference) import from tests/store/integrity too."""
