"""The `clipsearch` command: parser and dispatch (`main`) and the plain-text tables (`render`). Imports `service`
and the bottom layer."""
