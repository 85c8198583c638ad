# The qingluan controller and driver as one image (see docker-compose.yml).
# Built from the repository: docker build -t qingluan:latest .
FROM python:3.11-slim

# the driver's host tools: ovs-vsctl/ovs-ofctl (OVSDB and flows of the host's OVS, through
# the mounted /var/run/openvswitch), iptables (nft backend, like Debian 12 hosts), ip, ethtool
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        openvswitch-switch iptables iproute2 ethtool conntrack procps \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY requirements.txt pyproject.toml ./
RUN pip install --no-cache-dir -r requirements.txt
COPY qingluan ./qingluan
RUN pip install --no-cache-dir --no-deps . && rm -rf /src

WORKDIR /
ENTRYPOINT ["qingluan"]
CMD ["--help"]
