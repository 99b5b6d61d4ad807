"""The Python client SDK: `from services.client import LoupeClient`."""

from services.client.sdk import Hit, ImageInput, Item, LoupeCallError, LoupeClient, SearchResult, TextInput

__all__ = ["Hit", "ImageInput", "Item", "LoupeCallError", "LoupeClient", "SearchResult", "TextInput"]
