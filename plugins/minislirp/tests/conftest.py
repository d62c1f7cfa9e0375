import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
pytest_plugins = ["kboxnet_core.testing.pytest_plugin"]
