"""``vitrieval search``: the top-k indexed images for one or more query images, as a text table or JSON.

    vitrieval search --index catalog.idx query.jpg
    vitrieval search --index catalog.idx a.jpg b.png -k 5 --json
    vitrieval search --index landmarks.idx query.jpg --rerank aqe --rerank-n 3 --rerank-alpha 3

``--rerank aqe``: alpha-weighted query expansion against the index (each query's top-n neighbours in the index,
the expanded query searched again; scores are then cosines to the expanded query). Database-side augmentation is
built into an index (``vitrieval index --dba N,ALPHA``), not a search option. Queries are embedded at the index's
scales (``vitrieval index --scales``); ``--scales`` here only confirms them: other scales are refused, since
descriptors of other scales are not comparable with the indexed ones.
"""

from __future__ import annotations

import argparse
import json

from vitrieval.cli import CLIError
from vitrieval.cli.index_cmd import apply_search_params, load_index_for_queries
from vitrieval.cli.retrieval_options import (
    add_device_argument,
    add_model_arguments,
    add_rerank_arguments,
    add_scales_argument,
    rerank_from_args,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``search``."""
    parser = subparsers.add_parser("search", help="search an index with query images",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index folder written by `vitrieval index`")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="query image file(s)")
    parser.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_model_arguments(parser, checkpoint_help="the index's model, if it moved since the index was built")
    add_device_argument(parser)
    parser.add_argument("--nprobe", type=int, help="IVF: lists visited per query")
    parser.add_argument("--ef-search", type=int, help="HNSW: candidate list size per query")
    add_rerank_arguments(parser, methods="aqe",
                         what="aqe: alpha-weighted query expansion over each query's top --rerank-n neighbours in "
                              "the index (DBA is an index option: vitrieval index --dba)")
    add_scales_argument(parser, "; queries follow the index's scales: a value other than the index's is refused")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="what embeds the queries: torch (default) or onnx (the model's model.onnx from "
                             "`vitrieval export`, run by onnxruntime)")
    return parser


def format_table(query: str, hits: list) -> str:
    """A query's results as an aligned text table: rank, id (what ``vitrieval index --remove`` takes), score,
    label, class name, path."""
    width = max([len("class")] + [len(h.class_name or "") for h in hits])
    lines = [f"query: {query}", f"{'rank':>4}  {'id':>8}  {'score':>7}  {'label':>6}  {'class':<{width}}  path"]
    for rank, h in enumerate(hits, start=1):
        label = "" if h.label is None else str(h.label)
        lines.append(f"{rank:>4}  {h.id:>8}  {h.score:7.4f}  {label:>6}  {h.class_name or '':<{width}}  {h.path}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Embed the queries with the index's model and print their neighbours."""
    from vitrieval.data.images import ImageDecodeError

    if args.k < 1:
        raise CLIError(f"-k must be >= 1, got {args.k}")
    rerank = rerank_from_args(args, allowed=("aqe",), hint="; DBA is built into an index: vitrieval index --dba")
    index = load_index_for_queries(args, runtime=args.runtime)
    if args.scales is not None and tuple(args.scales) != index.scales:
        raise CLIError(f"--scales {','.join(f'{s:g}' for s in args.scales)}: the index {args.index} was built at "
                       f"scales {','.join(f'{s:g}' for s in index.scales)} and queries are embedded at those "
                       "(descriptors of other scales are not comparable); leave --scales out")
    apply_search_params(index, args)
    try:
        results = index.search(list(args.images), k=args.k, rerank=rerank if rerank.methods else None)
    except ImageDecodeError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        out = [{"query": q, "results": [{"rank": r, **h.to_dict()} for r, h in enumerate(hits, start=1)]}
               for q, hits in zip(args.images, results)]
        print(json.dumps(out, indent=2))
    else:
        print("\n\n".join(format_table(q, hits) for q, hits in zip(args.images, results)))
    return 0
