"""Feedback writers: the feedback model (in process or behind a server), its training as a second policy, and
the weights it trains (a separate model, or a LoRA adapter on the solver's base model)."""
