"""The Gradio web front-end (`rag serve`)."""

import os

# No analytics, version checks or hub telemetry: the app must run offline and leak nothing.
# Set here, before any module of the UI imports Gradio.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
