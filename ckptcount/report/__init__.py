"""How a ``Report`` is shown: JSON (the contract, with its ``schema_version``), JSON lines, the terminal table and
Markdown."""
