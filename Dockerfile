# Image for the worker and index replica services of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# torch first, CPU build: an unpinned torch would pull the multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY ecrec_stream ecrec_stream
COPY streams streams
COPY workers workers
RUN pip install '.[cpu,s3,int8]'
ENTRYPOINT ["ecrec-stream"]
