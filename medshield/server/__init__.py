"""The HTTP shell: a FastAPI app serving a (defended) classifier with keys, limits and an audit log.

Needs the ``server`` extra: ``pip install 'medshield[server]'``.
"""
