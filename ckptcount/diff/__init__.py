"""``ckptcount diff A B``: what changed between two reports, how their names align across formats, an optional
blockwise content comparison, and its renderings and command."""
