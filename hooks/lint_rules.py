"""Built-in plugin: the standard lint rule set. (Being written.)"""
