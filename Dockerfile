# GPU image for pretraining on H100s: CUDA PyTorch, the pinned requirements, and flash-attn (the fast attention path).
# docker build -t flexbert . && docker run --gpus all --ipc=host -v /data:/data flexbert main.py yamls/pretrain_base.yaml
FROM pytorch/pytorch:2.7.0-cuda12.6-cudnn9-devel

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WORKDIR /workspace/flexbert

# flash-attn 2 compiles against the image's torch when no prebuilt wheel matches. Each parallel job (nvcc, 4 threads)
# peaks at ~12-20 GB of RAM; flash-attn's README: MAX_JOBS=4 on machines with less than 96 GB. More RAM:
# docker build --build-arg MAX_JOBS=8 .
ARG MAX_JOBS=4

COPY requirements.txt .
RUN pip install -r requirements.txt \
 && pip install ninja packaging \
 && MAX_JOBS=${MAX_JOBS} pip install --no-build-isolation flash-attn==2.7.4.post1

COPY . .
# The checkout as an editable package: flexbert, data_prep and benchmarks import from any working directory.
RUN pip install --no-deps -e .
ENTRYPOINT ["composer"]
CMD ["main.py", "yamls/pretrain_base.yaml"]
