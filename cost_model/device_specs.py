"""Built-in device specs, in the same format as a user's devices file (docs/devices.md).

Conventions, so that every row means the same thing:

- ``peak_tflops`` are DENSE peaks. NVIDIA, AMD and Intel often headline 2:4-sparsity figures
  (marked '*' or 'with sparsity' in their datasheets); those are halved here and the source says so.
  NVIDIA's 'fp32' is the non-tensor (CUDA core) FP32 rate; 'tf32' is separate. AMD's 'fp32' is
  the matrix-core FP32 rate, which an FP32 GEMM reaches on CDNA.
- CPU peaks are not published by the vendors; they are derived (cores x base clock x FLOP/cycle)
  and each source shows the arithmetic. Real GEMMs run below them (AVX-512/AMX clocks are lower).
- ``mem_capacity_gb`` is the datasheet figure in decimal GB (1e9 bytes), which slightly
  understates HBM stacks sized in GiB: conservative for capacity checks.
- Link ``gbs`` are GB/s PER DIRECTION. Vendors quote PCIe, NVLink and Infinity Fabric as
  bidirectional totals (H100: 'NVLink 900 GB/s', 'PCIe Gen5 128 GB/s'); those are halved here and
  the quoted figure is kept in the link's name.
- Prices are USD per device-hour, on-demand, from the named provider and date. They move often;
  override them with a devices file. None where no public on-demand price was found.

Sources marked UNVERIFIED could not be checked against the vendor's own document while this table
was written; they keep the most widely published value and say where it comes from.
"""
from __future__ import annotations

_NV_H100 = ("NVIDIA H100 Tensor Core GPU datasheet (2023, nvidia.com/en-us/data-center/h100) and "
            "NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), H100 SXM5")
_NV_H200 = "NVIDIA H200 Tensor Core GPU datasheet (2024, nvidia.com/en-us/data-center/h200), H200 SXM"
_NV_B200 = ("NVIDIA DGX B200 / HGX B200 datasheets (2024, nvidia.com/en-us/data-center/hgx), per-GPU "
            "figures for the 1000 W HGX B200 as tabulated in glennklockwood.com/garden/processors/B200")
_NV_A100 = ("NVIDIA A100 Tensor Core GPU datasheet (2021, nvidia-a100-datasheet-us-nvidia-1758950-r4), "
            "A100 80GB SXM column")
_NV_L4 = "NVIDIA L4 Tensor Core GPU datasheet (2023, nvidia.com/en-us/data-center/l4)"
_AMD_MI300X = ("AMD Instinct MI300X data sheet (2023, amd.com/.../instinct/mi300x) and ROCm docs "
               "'AMD Instinct MI300 series microarchitecture' (2024)")
_AMD_MI250X = ("AMD Instinct MI250X data sheet (2021, amd.com/.../instinct/mi250x) and ROCm docs "
               "'AMD Instinct MI250 microarchitecture'")
_INTEL_G3 = ("Intel Gaudi 3 AI Accelerator, Hot Chips 2024 presentation (R. Kaplan, Aug 2024), "
             "spec table; Intel Gaudi 3 white paper (2024)")
_XEON = ("Intel ARK 'Intel Xeon 6980P' (2024): 128 P-cores, 2.0 GHz base, 12 channels DDR5-6400; "
         "confirmed by hardwareluxx.de Xeon 6900P review table (Sep 2024)")
_AMX = ("Intel AMX: 1024 BF16 / 2048 INT8 operations per cycle per core (Intel Architecture Day "
        "2021; Intel AMX overview); AMX-FP16 added in Granite Rapids (Intel ISA extensions rev. 46)")
_EPYC = ("AMD EPYC 9654 product page (2022, amd.com/en/products/processors/server/epyc/"
         "4th-generation-9004-and-8004-series/amd-epyc-9654): 96 cores, 2.4 GHz base, 12 channels "
         "DDR5-4800, 460.8 GB/s per socket, up to 6 TB")
_MEM_CONFIG = ("configuration assumption, not a datasheet limit: 12 channels x 1 DIMM x 64 GB RDIMM "
               "= 768 GB per socket (the DIMM size Intel used in its 2024 Xeon 6 benchmark configs); "
               "set your machine's size in a devices file")
_NEBIUS = "Nebius AI Cloud on-demand list price"

SPECS: dict[str, dict] = {
    "h100-sxm": {
        "aliases": ["h100", "h100-sxm5"],
        "kind": "gpu",
        "description": "NVIDIA H100 SXM5 80GB (Hopper)",
        "peak_tflops": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
                        "fp8": 1978.9, "int8": 1978.9},
        "mem_bandwidth_gbs": 3350,
        "mem_capacity_gb": 80,
        "host_link": {"name": "PCIe 5.0 x16 (128 GB/s bidirectional)", "gbs": 64},
        "peer_link": {"name": "NVLink 4, 18 links (900 GB/s bidirectional)", "gbs": 450},
        "price_per_hour": 2.95,
        "sources": {
            "peak_tflops.fp32": f"{_NV_H100}: FP32 67 TFLOPS (whitepaper: 66.9), non-tensor",
            "peak_tflops.tf32": f"{_NV_H100}: TF32 Tensor Core 989 TFLOPS with sparsity; dense 494.7 "
                                "per whitepaper",
            "peak_tflops.bf16": f"{_NV_H100}: BF16 Tensor Core 1,979 TFLOPS with sparsity; dense "
                                "989.4 per whitepaper",
            "peak_tflops.fp16": f"{_NV_H100}: FP16 Tensor Core 1,979 TFLOPS with sparsity; dense "
                                "989.4 per whitepaper",
            "peak_tflops.fp8": f"{_NV_H100}: FP8 Tensor Core 3,958 TFLOPS with sparsity; dense 1978.9",
            "peak_tflops.int8": f"{_NV_H100}: INT8 Tensor Core 3,958 TOPS with sparsity; dense 1978.9",
            "mem_bandwidth_gbs": f"{_NV_H100}: GPU memory bandwidth 3.35 TB/s",
            "mem_capacity_gb": f"{_NV_H100}: GPU memory 80 GB HBM3",
            "host_link": f"{_NV_H100}: 'PCIe Gen5: 128 GB/s' (bidirectional) -> 64 GB/s per direction",
            "peer_link": f"{_NV_H100}: 'NVLink: 900 GB/s' (bidirectional, 18 NVLink 4 links) -> "
                         "450 GB/s per direction; through NVSwitch (HGX) any pair gets the full rate",
            "price_per_hour": f"{_NEBIUS}, NVIDIA HGX H100, $2.95 per GPU-hour (nebius.com/prices, as "
                              "quoted by opslyft.com on 2026-05-18); Lambda lists $2.99-3.99 for 8x H100 "
                              "SXM in 2026 reports",
        },
    },
    "h200": {
        "aliases": ["h200-sxm"],
        "kind": "gpu",
        "description": "NVIDIA H200 SXM 141GB (Hopper, HBM3e)",
        "peak_tflops": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
                        "fp8": 1978.9, "int8": 1978.9},
        "mem_bandwidth_gbs": 4800,
        "mem_capacity_gb": 141,
        "host_link": {"name": "PCIe 5.0 x16 (128 GB/s bidirectional)", "gbs": 64},
        "peer_link": {"name": "NVLink 4, 18 links (900 GB/s bidirectional)", "gbs": 450},
        "price_per_hour": 3.50,
        "sources": {
            "peak_tflops.fp32": f"{_NV_H200}: FP32 67 TFLOPS (same GH100 compute as H100 SXM: 66.9)",
            "peak_tflops.tf32": f"{_NV_H200}: TF32 Tensor Core 989 TFLOPS with sparsity; dense 494.7",
            "peak_tflops.bf16": f"{_NV_H200}: BF16 Tensor Core 1,979 TFLOPS with sparsity; dense 989.4",
            "peak_tflops.fp16": f"{_NV_H200}: FP16 Tensor Core 1,979 TFLOPS with sparsity; dense 989.4",
            "peak_tflops.fp8": f"{_NV_H200}: FP8 Tensor Core 3,958 TFLOPS with sparsity; dense 1978.9",
            "peak_tflops.int8": f"{_NV_H200}: INT8 Tensor Core 3,958 TOPS with sparsity; dense 1978.9",
            "mem_bandwidth_gbs": f"{_NV_H200}: GPU memory bandwidth 4.8 TB/s",
            "mem_capacity_gb": f"{_NV_H200}: GPU memory 141 GB HBM3e",
            "host_link": f"{_NV_H200}: 'PCIe Gen5: 128 GB/s' (bidirectional) -> 64 GB/s per direction",
            "peer_link": f"{_NV_H200}: 'NVIDIA NVLink: 900 GB/s' (bidirectional) -> 450 GB/s per "
                         "direction",
            "price_per_hour": f"{_NEBIUS}, 1x H200 preset 1gpu-16vcpu-200gb, $3.50/hour including "
                              "its vCPUs and RAM (docs.nebius.com/signup-billing/billing-changes-oct-2025, "
                              "October 2025)",
        },
    },
    "b200": {
        "aliases": ["b200-sxm", "hgx-b200"],
        "kind": "gpu",
        "description": "NVIDIA B200 (Blackwell, HGX B200 1000 W configuration)",
        "peak_tflops": {"fp32": 80, "tf32": 1100, "bf16": 2250, "fp16": 2250,
                        "fp8": 4500, "int8": 4500},
        "mem_bandwidth_gbs": 8000,
        "mem_capacity_gb": 180,
        "host_link": {"name": "PCIe 5.0 x16 (128 GB/s bidirectional)", "gbs": 64},
        "peer_link": {"name": "NVLink 5, 18 links (1.8 TB/s bidirectional)", "gbs": 900},
        "price_per_hour": 5.50,
        "sources": {
            "peak_tflops.fp32": f"{_NV_B200}: FP32 80 TFLOPS",
            "peak_tflops.tf32": f"{_NV_B200}: TF32 Tensor Core 2.2 PFLOPS with sparsity; dense 1.1 PFLOPS",
            "peak_tflops.bf16": f"{_NV_B200}: BF16 Tensor Core 4.5 PFLOPS with sparsity; dense 2.25 PFLOPS",
            "peak_tflops.fp16": f"{_NV_B200}: FP16 Tensor Core 4.5 PFLOPS with sparsity; dense 2.25 PFLOPS",
            "peak_tflops.fp8": f"{_NV_B200}: FP8 Tensor Core 9 PFLOPS with sparsity (DGX B200: 72 PFLOPS "
                               "for 8 GPUs); dense 4.5 PFLOPS",
            "peak_tflops.int8": f"{_NV_B200}: INT8 Tensor Core 9 POPS with sparsity; dense 4.5 POPS",
            "mem_bandwidth_gbs": f"{_NV_B200}: 64 TB/s HBM3e for 8 GPUs -> 8 TB/s per GPU",
            "mem_capacity_gb": f"{_NV_B200}: 1,440 GB HBM3e for 8 GPUs -> 180 GB per GPU (early "
                               "announcements said 192 GB; Vultr's nvidia-smi shows 179 GB usable, 2026)",
            "host_link": "UNVERIFIED: HGX B200 hosts (e.g. DGX B200 with Xeon Platinum 8570) are PCIe "
                         "Gen5, so 64 GB/s per direction; some sources list the B200 itself as PCIe "
                         "Gen6-capable (glennklockwood.com), which no x86 host here drives",
            "peer_link": f"{_NV_B200}: fifth-generation NVLink 1.8 TB/s per GPU (bidirectional) -> "
                         "900 GB/s per direction",
            "price_per_hour": "UNVERIFIED: Nebius AI Cloud on-demand HGX B200, $5.50 per GPU-hour (2025 list "
                              "price as recalled); lyceum.technology (2026-03-11) reports $4.50-6.00 "
                              "on specialised clouds, AWS p6-b200 ~$14.24 per GPU-hour",
        },
    },
    "a100-sxm-80gb": {
        "aliases": ["a100", "a100-80gb", "a100-sxm"],
        "kind": "gpu",
        "description": "NVIDIA A100 80GB SXM4 (Ampere)",
        "peak_tflops": {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312, "int8": 624},
        "mem_bandwidth_gbs": 2039,
        "mem_capacity_gb": 80,
        "host_link": {"name": "PCIe 4.0 x16 (64 GB/s bidirectional)", "gbs": 32},
        "peer_link": {"name": "NVLink 3, 12 links (600 GB/s bidirectional)", "gbs": 300},
        "price_per_hour": 1.79,
        "sources": {
            "peak_tflops.fp32": f"{_NV_A100}: FP32 19.5 TFLOPS",
            "peak_tflops.tf32": f"{_NV_A100}: TF32 Tensor Core 156 TFLOPS (312 with sparsity)",
            "peak_tflops.bf16": f"{_NV_A100}: BFLOAT16 Tensor Core 312 TFLOPS (624 with sparsity)",
            "peak_tflops.fp16": f"{_NV_A100}: FP16 Tensor Core 312 TFLOPS (624 with sparsity)",
            "peak_tflops.int8": f"{_NV_A100}: INT8 Tensor Core 624 TOPS (1,248 with sparsity); no FP8",
            "mem_bandwidth_gbs": f"{_NV_A100}: GPU memory bandwidth 2,039 GB/s",
            "mem_capacity_gb": f"{_NV_A100}: GPU memory 80 GB HBM2e",
            "host_link": f"{_NV_A100}: 'PCIe Gen4: 64 GB/s' (bidirectional) -> 32 GB/s per direction",
            "peer_link": f"{_NV_A100}: 'NVLink: 600 GB/s' (bidirectional) -> 300 GB/s per direction",
            "price_per_hour": "UNVERIFIED: Lambda on-demand 8x A100 SXM 80GB, $1.79 per GPU-hour (2024-25 "
                              "list price as recalled); mercatus-ai.com (May 2026) reports $1.10-1.50 "
                              "on specialty clouds and $1.50-3.00 on hyperscalers",
        },
    },
    "l4": {
        "aliases": ["nvidia-l4"],
        "kind": "gpu",
        "description": "NVIDIA L4 24GB (Ada Lovelace, 72 W PCIe card)",
        "peak_tflops": {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121, "fp8": 242.5,
                        "int8": 242.5},
        "mem_bandwidth_gbs": 300,
        "mem_capacity_gb": 24,
        "host_link": {"name": "PCIe 4.0 x16 (64 GB/s bidirectional)", "gbs": 32},
        "peer_link": None,
        "price_per_hour": 0.71,
        "sources": {
            "peak_tflops.fp32": f"{_NV_L4}: FP32 30.3 TFLOPS",
            "peak_tflops.tf32": f"{_NV_L4}: TF32 Tensor Core 120 TFLOPS with sparsity; dense 60",
            "peak_tflops.bf16": f"{_NV_L4}: BFLOAT16 Tensor Core 242 TFLOPS with sparsity; dense 121",
            "peak_tflops.fp16": f"{_NV_L4}: FP16 Tensor Core 242 TFLOPS with sparsity; dense 121",
            "peak_tflops.fp8": f"{_NV_L4}: FP8 Tensor Core 485 TFLOPS with sparsity; dense 242.5",
            "peak_tflops.int8": f"{_NV_L4}: INT8 Tensor Core 485 TOPS with sparsity; dense 242.5",
            "mem_bandwidth_gbs": f"{_NV_L4}: GPU memory bandwidth 300 GB/s",
            "mem_capacity_gb": f"{_NV_L4}: GPU memory 24 GB GDDR6",
            "host_link": f"{_NV_L4}: 'PCIe Gen4 x16 64 GB/s' (bidirectional) -> 32 GB/s per direction",
            "price_per_hour": "UNVERIFIED: Google Cloud g2-standard-4 (1x L4, 4 vCPU, 16 GB) on-demand "
                              "us-central1, ~$0.71/hour (2024 list price as recalled); costnimbus.com "
                              "(March 2026) reports ~$0.70-0.80/hour",
        },
    },
    "mi300x": {
        "aliases": ["instinct-mi300x"],
        "kind": "gpu",
        "description": "AMD Instinct MI300X 192GB (CDNA 3, OAM)",
        "peak_tflops": {"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "fp16": 1307.4,
                        "fp8": 2614.9, "int8": 2614.9},
        "mem_bandwidth_gbs": 5300,
        "mem_capacity_gb": 192,
        "host_link": {"name": "PCIe 5.0 x16 (128 GB/s bidirectional)", "gbs": 64},
        "peer_link": {"name": "AMD Infinity Fabric, 7 links x 128 GB/s (896 GB/s bidirectional)",
                      "gbs": 448},
        "price_per_hour": 1.85,
        "sources": {
            "peak_tflops.fp32": f"{_AMD_MI300X}: peak FP32 matrix 163.4 TFLOPS (vector 81.7)",
            "peak_tflops.tf32": f"{_AMD_MI300X}: peak TF32 653.7 TFLOPS dense (1307.4 with sparsity)",
            "peak_tflops.bf16": f"{_AMD_MI300X}: peak BF16 1307.4 TFLOPS dense (2614.9 with sparsity)",
            "peak_tflops.fp16": f"{_AMD_MI300X}: peak FP16 1307.4 TFLOPS dense (2614.9 with sparsity)",
            "peak_tflops.fp8": f"{_AMD_MI300X}: peak FP8 2614.9 TFLOPS dense (5229.8 with sparsity)",
            "peak_tflops.int8": f"{_AMD_MI300X}: peak INT8 2614.9 TOPS dense (5229.8 with sparsity)",
            "mem_bandwidth_gbs": f"{_AMD_MI300X}: peak memory bandwidth 5.3 TB/s",
            "mem_capacity_gb": f"{_AMD_MI300X}: 192 GB HBM3",
            "host_link": f"{_AMD_MI300X}: PCIe Gen 5 x16, 128 GB/s peak (bidirectional) -> 64 GB/s per "
                         "direction",
            "peer_link": f"{_AMD_MI300X}: 7 Infinity Fabric links, 128 GB/s each, 896 GB/s aggregate "
                         "(bidirectional) -> 448 GB/s per direction; in an 8-GPU mesh one peer is one "
                         "link, i.e. 64 GB/s per direction to a single peer",
            "price_per_hour": "Vultr on-demand MI300X, $1.85 per GPU-hour (as listed in cliffcenter.com "
                              "research note 2026-05-18 and gpu.blog); TensorWave $1.50, Azure/Oracle "
                              "~$6 in the same note",
        },
    },
    "mi250x": {
        "aliases": ["instinct-mi250x"],
        "kind": "gpu",
        "description": "AMD Instinct MI250X 128GB (CDNA 2, OAM; ROCm shows it as two GCDs)",
        "peak_tflops": {"fp32": 95.7, "bf16": 383, "fp16": 383, "int8": 383},
        "mem_bandwidth_gbs": 3276.8,
        "mem_capacity_gb": 128,
        "host_link": {"name": "PCIe 4.0 x16 (64 GB/s bidirectional)", "gbs": 32},
        "peer_link": {"name": "AMD Infinity Fabric, 8 links x 100 GB/s (800 GB/s bidirectional)",
                      "gbs": 400},
        "price_per_hour": None,
        "sources": {
            "peak_tflops.fp32": f"{_AMD_MI250X}: peak FP32 matrix 95.7 TFLOPS (vector 47.9); whole "
                                "module, i.e. both GCDs",
            "peak_tflops.bf16": f"{_AMD_MI250X}: peak BF16 383.0 TFLOPS (no sparsity, no FP8/TF32)",
            "peak_tflops.fp16": f"{_AMD_MI250X}: peak FP16 383.0 TFLOPS",
            "peak_tflops.int8": f"{_AMD_MI250X}: peak INT8 383.0 TOPS",
            "mem_bandwidth_gbs": f"{_AMD_MI250X}: 3.2 TB/s peak (3276.8 GB/s: 8 HBM2e stacks at 1.6 GHz)",
            "mem_capacity_gb": f"{_AMD_MI250X}: 128 GB HBM2e (64 GB per GCD)",
            "host_link": f"{_AMD_MI250X}: PCIe Gen4 x16 in standard OAM servers -> 32 GB/s per direction "
                         "(Frontier-style nodes attach it over Infinity Fabric instead)",
            "peer_link": f"{_AMD_MI250X}: 8 Infinity Fabric links at 25 GT/s, 50 GB/s per direction each "
                         "(ROCm MI250 docs) -> 400 GB/s per direction; some of these links join the "
                         "two GCDs inside the package",
            "price_per_hour": "no public on-demand list price found from a major provider (2026)",
        },
    },
    "gaudi3": {
        "aliases": ["gaudi-3", "hl-325l"],
        "kind": "accelerator",
        "description": "Intel Gaudi 3 128GB (OAM HL-325L)",
        "peak_tflops": {"fp32": 28.7, "bf16": 1835, "fp8": 1835},
        "mem_bandwidth_gbs": 3670,
        "mem_capacity_gb": 128,
        "host_link": {"name": "PCIe 5.0 x16 (128 GB/s bidirectional)", "gbs": 64},
        "peer_link": {"name": "24x 200 GbE RoCE (1200 GB/s bidirectional)", "gbs": 600},
        "price_per_hour": None,
        "sources": {
            "peak_tflops.fp32": "UNVERIFIED placeholder: Intel's published Gaudi 3 tables give no FP32 "
                                f"rate ({_INTEL_G3}: BF16 matrix 1835, FP8 matrix 1835, BF16 vector "
                                "28.7 TFLOPS); the BF16 vector peak 28.7 is used as a conservative FP32 "
                                "figure. The MME also runs FP32/TF32, faster than this",
            "peak_tflops.bf16": f"{_INTEL_G3}: BF16 matrix (MME) 1835 TFLOPS, dense",
            "peak_tflops.fp8": f"{_INTEL_G3}: FP8 matrix (MME) 1835 TFLOPS, dense",
            "mem_bandwidth_gbs": f"{_INTEL_G3}: HBM bandwidth 3.67 TB/s (marketing rounds to 3.7)",
            "mem_capacity_gb": f"{_INTEL_G3}: HBM capacity 128 GB HBM2e",
            "host_link": f"{_INTEL_G3}: PCIe Gen5 x16, host interface peak 128 GB/s bidirectional -> "
                         "64 GB/s per direction",
            "peer_link": f"{_INTEL_G3}: 24x 200 GbE RoCE, networking 1200 GB/s bidirectional -> 600 GB/s "
                         "per direction (all ports; an 8-card box gives each peer only a few of them)",
            "price_per_hour": "no public on-demand list price found (IBM Cloud and Intel Tiber AI Cloud "
                              "offer Gaudi 3; prices not verified, 2026)",
        },
    },
    "xeon-6980p": {
        "aliases": ["xeon", "xeon6", "granite-rapids"],
        "kind": "cpu",
        "description": "Intel Xeon 6980P (Granite Rapids-AP, 128 P-cores), one socket",
        "peak_tflops": {"fp32": 16.384, "bf16": 262.144, "fp16": 262.144, "int8": 524.288},
        "mem_bandwidth_gbs": 614.4,
        "mem_capacity_gb": 768,
        "host_link": None,
        "peer_link": None,
        "price_per_hour": None,
        "sources": {
            "peak_tflops.fp32": f"derived, not published by Intel: 128 cores x 2.0 GHz base x 64 FP32 "
                                f"FLOP/cycle (2x 512-bit FMA) = 16.4 TFLOPS ({_XEON}); AVX-512 clocks "
                                "can sit below base",
            "peak_tflops.bf16": f"derived: 128 cores x 2.0 GHz x 1024 BF16 FLOP/cycle (AMX) = 262 TFLOPS "
                                f"({_XEON}; {_AMX}); AMX clocks can sit below base",
            "peak_tflops.fp16": f"derived: as bf16, AMX-FP16 runs at the BF16 rate ({_AMX})",
            "peak_tflops.int8": f"derived: 128 cores x 2.0 GHz x 2048 INT8 ops/cycle (AMX) = 524 TOPS "
                                f"({_XEON}; {_AMX})",
            "mem_bandwidth_gbs": f"derived: 12 channels x 6400 MT/s x 8 bytes = 614.4 GB/s ({_XEON}); "
                                 "MRDIMM-8800 would give 844.8 GB/s",
            "mem_capacity_gb": _MEM_CONFIG,
            "price_per_hour": "no public on-demand price for this SKU: cloud instances use custom Xeon 6 "
                              "parts priced per vCPU (2026)",
        },
    },
    "epyc-9654": {
        "aliases": ["epyc", "genoa"],
        "kind": "cpu",
        "description": "AMD EPYC 9654 (Genoa, 96 Zen 4 cores), one socket",
        "peak_tflops": {"fp32": 7.3728},
        "mem_bandwidth_gbs": 460.8,
        "mem_capacity_gb": 768,
        "host_link": None,
        "peer_link": None,
        "price_per_hour": None,
        "sources": {
            "peak_tflops.fp32": f"derived, not published by AMD: 96 cores x 2.4 GHz base x 32 FP32 "
                                f"FLOP/cycle (Zen 4 runs AVX-512 on 2x 256-bit FMA pipes) = 7.37 TFLOPS "
                                f"({_EPYC}). No BF16 entry: the AVX512-BF16 throughput of Zen 4 is "
                                "unverified, so bf16 falls back to this FP32 rate",
            "mem_bandwidth_gbs": f"{_EPYC}",
            "mem_capacity_gb": _MEM_CONFIG.replace("the DIMM size Intel used in its 2024 Xeon 6 "
                                                   "benchmark configs", "AMD's limit is 6 TB"),
            "price_per_hour": "no public on-demand price for this SKU: cloud EPYC instances use custom "
                              "parts (e.g. EPYC 9R14) priced per vCPU (2026)",
        },
    },
}
