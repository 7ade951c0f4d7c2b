"""SSH key pairs for labs the plugin builds."""

from __future__ import annotations

import os
from pathlib import Path


def generate_key_pair(path: Path) -> str:
    """Write an ed25519 private key (OpenSSH format, mode 600) to `path`; return the public
    key line for the VM's authorized keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    public_line = f"{public} milab"
    path.with_name(path.name + ".pub").write_text(public_line + "\n")
    return public_line
