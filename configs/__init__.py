"""The YAML configs shipped with aster (tiny.yaml is the embedded default)."""
