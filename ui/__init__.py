"""The Gradio web front-end (`rag serve`)."""
