"""b4m: content-style customization of text-to-image diffusion models with B4M (Break-for-Make).

Xu et al., "B4M: Breaking Low-Rank Adapter for Making Content-Style Customization", ACM TOG 2025.
"""

__version__ = "0.1.0"
