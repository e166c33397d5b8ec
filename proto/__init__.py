"""The wire contract, shipped as package data so a client in another language can be generated from the
installed package: ``ecgsearch proto --out DIR`` writes ``ecgsearch/v1/search.proto`` under DIR."""
