-- How each store's vectors are stored and indexed (stores[].index.quantization): `none`, `halfvec` (stored and
-- indexed at half precision) or `binary` (full-precision column, HNSW over binary_quantize(embedding), searches
-- rescored with the full vectors). Existing stores are `none`, which is what they are.
ALTER TABLE vector_stores
    ADD COLUMN quantization text NOT NULL DEFAULT 'none' CHECK (quantization IN ('none', 'halfvec', 'binary'));
