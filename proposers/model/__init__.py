"""Model drafters: a draft language model proposes chains or trees."""
