"""Reading, listing, splitting and streaming chest X-ray images."""
