"""The web demo: a Gradio app over the exported model's transformers pipeline, and a Space made from it."""
