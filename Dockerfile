# GPU image for pretraining on H100s: CUDA PyTorch, the pinned requirements, and flash-attn (the fast attention path).
# docker build -t flexbert . && docker run --gpus all --ipc=host -v /data:/data flexbert main.py yamls/pretrain_base.yaml
FROM pytorch/pytorch:2.7.0-cuda12.6-cudnn9-devel

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
WORKDIR /workspace/flexbert

COPY requirements.txt .
RUN pip install -r requirements.txt \
 && pip install ninja packaging \
 # flash-attn 2 builds against the image's torch; MAX_JOBS bounds the compiler's memory
 && MAX_JOBS=8 pip install --no-build-isolation flash-attn==2.7.4.post1

COPY . .
ENTRYPOINT ["composer"]
CMD ["main.py", "yamls/pretrain_base.yaml"]
