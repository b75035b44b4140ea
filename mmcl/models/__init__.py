"""Models: the open_clip backbone factory, classifier heads, prompt and adapter modules."""
