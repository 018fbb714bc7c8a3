"""Parameter-efficient tuning: LoRA (lora.py), prompt tuning (prompt.py), peft adapters (hf_peft.py)."""
