"""codefill's engine: a masked-diffusion transformer that fills the hole between a prefix and a suffix."""

import os

# OpenMP threads that spin while waiting made fills 20-50x slower whenever another process kept a core busy;
# passive waiting costs nothing measurable on an idle machine. Set before torch loads (the user's choice wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
