"""Run with Label Studio's own Python (``make test-integration`` does, right after installing
it): imports Label Studio's Django settings the way ``label-studio start`` does, which is
where a broken dependency kills it (sentry-sdk 3: ``TypeError: Unknown option
'send_default_pii'``). Prints one line; exits 1 with the error line if the import fails."""

import os
import sys
import tempfile
import time
import traceback

t0 = time.time()
with tempfile.TemporaryDirectory() as data_dir:
    os.environ["LABEL_STUDIO_BASE_DATA_DIR"] = data_dir
    os.environ["DJANGO_SETTINGS_MODULE"] = "core.settings.label_studio"
    try:
        import label_studio

        sys.path.insert(0, os.path.dirname(label_studio.__file__))  # as label_studio/server.py does
        import django

        django.setup()
    except Exception as e:  # noqa: BLE001 - any failure here is the finding
        traceback.print_exc()
        print(f"Label Studio cannot start: {type(e).__name__}: {e} (fix the bound in constraints.txt, "
              f"then `rm -rf .venv-labelstudio && make test-integration`)", file=sys.stderr)
        sys.exit(1)
print(f"Label Studio {label_studio.__version__}: settings import in {time.time() - t0:.1f} s")
