"""The InstructGPT recipe: SFT, reward model from ranked comparisons, PPO-RLHF."""
