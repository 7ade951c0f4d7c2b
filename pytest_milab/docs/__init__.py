"""Lab documents under test: `pytest lab.md` runs a lab's own shell blocks in order, as its
reader would, and names where the document has drifted from today's Azure and Azure CLI.

`document` reads the Markdown (blocks, annotations, sidecar, document errors), `shell` runs
blocks on the operator's machine and in the VM, `runner` judges each block, `drift` (with the
catalogue `drift.toml`) names known drift and writes the fixed copy, `report` the reports,
`collect` the pytest items."""
