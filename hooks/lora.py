"""Built-in plugin: LoRA adapters (peft) for the LLM and the flow. (Being written.)"""
