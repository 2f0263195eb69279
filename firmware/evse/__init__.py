# The charger application (docs/development.md "Source map").


def unload(name):
    """Forgets a module imported only while its feature is in use (OTA, solar charging):
    its objects are garbage once nothing else refers to them."""
    import sys

    if sys.modules.pop(name, None) is not None:
        pkg, _, attr = name.rpartition(".")
        parent = sys.modules.get(pkg) if pkg else None
        if parent is not None:
            try:
                delattr(parent, attr)
            except (AttributeError, TypeError):
                pass
