"""The page: `build_demo()` makes the Blocks. All components first, tab by tab, then every event in one
place, in the order a visitor meets them. Handlers (beacon/app/handlers.py) yield updates by output name;
`_by_name` turns those into Gradio's {component: value}."""
from __future__ import annotations

import functools

import gradio as gr
import pandas as pd

from beacon import pipeline
from beacon.model.models import DEFAULT_MODEL, QUANTIZATIONS

from beacon.app.handlers import (CHECK_OUTPUTS, EXPORT_OUTPUTS, OPEN_OUTPUTS, RESTORE_OUTPUTS, TRAIN_OUTPUTS,
                                 ask_model, check, estimate_note, export_gguf, facts_changed, interference_kind,
                                 load_sample, model_changed, new_session, on_unload, open_run, remember_run,
                                 restore_runs, review_edit, review_settings, stop_check, stop_run, train, upload,
                                 upload_anchors, upload_probes)
from beacon.app.render import (error_box, FACT_COLUMNS, FACT_TOOLTIP, INTERFERENCE_KINDS, INTERFERENCE_TOOLTIP,
                               RESULT_COLUMNS, REVIEW_COLUMNS)
from beacon.app import api
from beacon.app.settings import (LAYER_CHOICES, MAX_STEPS, NO_EARLIER, QUEUE_SIZE, RUN_TTL_HOURS, SAMPLES,
                                 anchors_used, default, device_note, greyed, guard_widgets, layer_count, limits_note,
                                 model_allowlist)

CSS = """
/* a greyed choice (a setting the others leave idle) looks greyed, not merely unclickable */
#anchors-in label:has(input:disabled), #merge-in label:has(input:disabled) { opacity: .45; }
.beacon-header h1 { display: flex; align-items: center; gap: .4em; margin-bottom: .2em; }
.beacon-header p { max-width: 62em; }
.beacon-status { font-size: .95em; padding: .3em 0; }
.beacon-status .stages { color: var(--body-text-color); }
.beacon-status .stages .done { color: #2e9e5b; }
.beacon-status .stages span { color: var(--body-text-color-subdued); }
.beacon-status .bar { height: 10px; border-radius: 5px; background: var(--neutral-200); margin: .5em 0; overflow: hidden; }
.beacon-status .bar > div { height: 100%; background: var(--color-accent); transition: width .4s; }
.beacon-status .msg { font-family: var(--font-mono); font-size: .9em; color: var(--body-text-color-subdued); }
.beacon-status .note { margin-top: .3em; font-weight: 600; }
.small-note { font-size: .85em; color: var(--body-text-color-subdued); }
.beacon-error { border-left: 4px solid #d1495b; background: #fdecee; color: #7a1522; padding: .5em .8em;
                border-radius: 4px; margin: .3em 0; }
/* plots are wide (7:4.5): show them whole instead of as square thumbnails */
#plots .grid-wrap { max-height: none !important; height: auto !important; overflow: visible; padding-top: 2.4em; }
#plots .grid-container { grid-template-rows: none; grid-auto-rows: auto; }
#plots .thumbnail-item { aspect-ratio: auto; height: auto; }
#plots .thumbnail-lg > img { height: auto; }
#downloads .label-clear-button { display: none; }  /* results are not the person's to remove */
#plots .caption-label { position: static; max-width: 100%; border: none; white-space: normal; }
/* plots differ in height (one row per fact in some): two stacked columns instead of a grid with gaps */
#plots .grid-container { display: block; column-count: 2; column-gap: var(--spacing-lg); }
#plots .gallery-item { break-inside: avoid; margin-bottom: var(--spacing-lg); }
@media (max-width: 900px) { #plots .grid-container { column-count: 1; } }
"""
LOGO = ("<svg width='34' height='34' viewBox='0 0 32 32' aria-hidden='true'><path d='M13 12h6l2 17h-10z' "
        "fill='#6366f1'/><rect x='12' y='9' width='8' height='3' rx='1' fill='#4338ca'/><path d='M16 3l5 6h-10z' "
        "fill='#f59e0b'/><path d='M21 5l9-3v8zM11 5L2 2v8z' fill='#fcd34d' opacity='.7'/></svg>")


def _by_name(fn, components: dict, errors_to: str | None = None):
    """fn yields {output name: value}; the event gets {component: value}. Closing this generator (the
    page went away) closes fn's, so a run stops training for nobody. A gr.Error is shown in the output
    `errors_to` (it stays there) and as a toast; the other outputs keep what they had."""
    @functools.wraps(fn)  # keeps fn's signature: Gradio finds the gr.Request parameter through it
    def run(*args, **kwargs):
        updates = fn(*args, **kwargs)
        try:
            for update in updates:
                yield {components[name]: value for name, value in update.items()}
        except gr.Error as e:
            if errors_to is None:
                raise
            gr.Warning(e.message)
            yield {components[errors_to]: error_box(e.message)}
        finally:
            updates.close()
    return run


def _named_once(fn, components: dict):
    """fn returns {output name: value}; the event gets {component: value}."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return {components[name]: value for name, value in fn(*args, **kwargs).items()}
    return run


def _inline(fn, n_outputs: int, errors_to: int):
    """fn returns its outputs as a tuple; a gr.Error becomes a toast and a box in output `errors_to` that
    stays, while the other outputs (the facts table, say) keep what they had."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as e:
            gr.Warning(e.message)
            out = [gr.skip()] * n_outputs
            out[errors_to] = error_box(e.message)
            return tuple(out)
    return run


def build_demo() -> gr.Blocks:
    # Gradio's copies of the files it served expire with the runs (checked every hour).
    with gr.Blocks(title="Beacon", delete_cache=(3600, int(RUN_TTL_HOURS * 3600))) as demo:
        state = gr.State(new_session)
        # What Check measured (plain data; the model is held apart, in handlers): not kept forever.
        analysis_state = gr.State(None, time_to_live=1800)
        # The visitor's recent runs, kept in their browser (encrypted): they survive a reload.
        recent = gr.BrowserState([], storage_key="beacon-recent-runs")

        gr.HTML(f"<div class='beacon-header'><h1>{LOGO} Beacon</h1><p>Teach a small language model new facts with "
                "LoRA, and see honestly what that does: which facts it learns, which it only parrots, what else it "
                "forgets.<br><b>1</b> bring facts → <b>2</b> review the checks → <b>3</b> train → <b>4</b> compare "
                "before and after, ask the model, download the adapter.</p></div>", js_on_load=None)

        with gr.Tabs(selected="facts") as tabs:
            with gr.Tab("1 · Facts", id="facts"):
                with gr.Row(equal_height=True):
                    with gr.Column(scale=3):
                        gr.Markdown("**Load a sample**, upload a file, or type and paste rows into the table below "
                                    "(`prompt` and `target` are required; `|` separates paraphrases).")
                        with gr.Row():
                            sample_btns = [gr.Button(label, size="sm") for label in SAMPLES]
                        facts_note = gr.Markdown("No facts yet.", elem_id="facts-note")
                    with gr.Column(scale=2):
                        file_in = gr.File(label="Upload facts: CSV, JSON or JSONL",
                                          file_types=[".csv", ".json", ".jsonl"], height=150, elem_id="upload")
                facts_table = gr.Dataframe(pd.DataFrame(columns=FACT_COLUMNS), headers=FACT_COLUMNS, datatype="str",
                                           interactive=True, column_count=len(FACT_COLUMNS), wrap=True,
                                           max_height=480, label="Facts (editable)", elem_id="facts-table",
                                           column_widths=["8%", "30%", "14%", "13%", "10%", "25%"])
                with gr.Row():
                    allow = model_allowlist()
                    model_in = gr.Dropdown(list(allow) if allow else [DEFAULT_MODEL], value=default("model"),
                                           allow_custom_value=allow is None, scale=3, label="Model",
                                           info="The default works offline. Or type any Hub id or local path of a "
                                                "causal language model." if allow is None else
                                                "The models this server runs (the default works offline).")
                    quant_in = gr.Radio(list(QUANTIZATIONS), value=default("quantization"), label="Quantisation",
                                        scale=2)
                device_md = gr.Markdown(device_note(default("quantization")), elem_id="device")
                with gr.Row():
                    check_btn = gr.Button("Check facts →", variant="primary", scale=3, elem_id="check-btn")
                    check_stop_btn = gr.Button("Stop", variant="stop", scale=1, interactive=False,
                                               elem_id="check-stop")
                check_status = gr.HTML("", elem_id="check-status")
                gr.Markdown(limits_note(), elem_id="limits", elem_classes="small-note")

            with gr.Tab("2 · Review", id="review"):
                with gr.Row():
                    filter_in = gr.Checkbox(default("filter"), label="Filter: drop outliers by semantic distance",
                                            info="at most 10% of the facts; the reason is shown")
                    weighting_in = gr.Radio(["semantic", "dynamic", "uniform"], value=default("weighting"),
                                            label="Loss weighting",
                                            info="semantic: facts far from what the model knows weigh more")
                review_note = gr.Markdown("Press **Check facts** on tab 1: Beacon looks for duplicates and "
                                          "contradictions, measures what the model answers now, and how far each "
                                          "fact is from what it knows.", elem_id="review-note")
                review_table = gr.Dataframe(pd.DataFrame(columns=REVIEW_COLUMNS), headers=REVIEW_COLUMNS,
                                            datatype=["bool", "str", "str", "str", "str", "str", "number", "str",
                                                      "str"],
                                            interactive=True, static_columns=list(range(1, len(REVIEW_COLUMNS))),
                                            wrap=True, max_height=560,
                                            label="Tick keep to train a fact, untick to drop it",
                                            elem_id="review-table",
                                            column_widths=["80px", "64px", "20%", "10%", "19%", "110px", "110px",
                                                           "96px", "13%"])
                gr.Markdown("*known*: the model already answers it · *update*: it confidently answers something "
                            "else · *new*: no settled answer · *distance*: semantic distance between the prompt and "
                            "the target inside the model (larger is harder) · *weight*: how much its loss counts against an average fact's (1.00) · "
                            "*answer before*: the model's answer now (✓ = already right)", elem_classes="small-note")
                to_train_btn = gr.Button("Next: train →", variant="primary")

            with gr.Tab("3 · Train", id="train"):
                with gr.Row():
                    steps_in = gr.Slider(1, MAX_STEPS, value=min(default("steps"), MAX_STEPS), step=1,
                                         label="Step budget", elem_id="steps-in",
                                         info=f"training stops sooner once every fact is recalled; at most {MAX_STEPS}"
                                              " on this server")
                    lr_in = gr.Number(default("lr"), label="Learning rate", minimum=1e-6, maximum=1.0, step=1e-4)
                    rank_in = gr.Dropdown([2, 4, 8, 16, 32, 64], value=default("rank"), label="LoRA rank")
                    gate_in = gr.Radio([("on every token", "none"), ("from a subject's name on", "from-subject"),
                                        ("only on your subjects' names", "subject")],
                                       value=default("gate"), label="Where the adapter acts", elem_id="gate-in",
                                       info="every token: the locality guard holds the rest; from a subject's name "
                                            "on: text that names none of your subjects runs through the base model "
                                            "unchanged, and the guard holds what the model says of each subject by "
                                            "your other facts' relations and how it writes about each; only on the names: the same, without the "
                                            "words after them (paraphrases learned less well)")
                    guard_in = gr.Slider(0, 30, value=default("locality_guard"), step=0.5, label="Locality guard",
                                         info="pulls the model towards the base: on every token, on unrelated text "
                                              "and known facts near yours; behind a gate, on what it said of your "
                                              "subjects; 0 = off")
                custom_default = default("layers") not in ("all", "auto")
                anchors_on = anchors_used(default("gate"), default("locality_guard"))
                with gr.Accordion("Advanced: where to train, data orders, continue an earlier run", open=False,
                                  elem_id="advanced"):
                    with gr.Row():
                        layers_in = gr.Radio(LAYER_CHOICES, value="custom" if custom_default else default("layers"),
                                             label="Where to train", elem_id="layers-in",
                                             info="auto: the layers where the answers form, from a logit-lens pass "
                                                  "over the facts; custom: your list. The other layers stay frozen.")
                        n_default = layer_count(default("model"))
                        layers_custom = gr.Textbox(default("layers") if custom_default else "",
                                                   label="Layers to train", placeholder="e.g. 20-29 or 0,5,10",
                                                   visible=custom_default,
                                                   info=f"indices 0..{n_default - 1} for the default model"
                                                   if n_default else "layer indices, from 0", elem_id="layers-custom")
                    with gr.Row():
                        orders_in = gr.Slider(1, 4, value=default("orders"), step=1, label="Data orders K",
                                              info="1 = off. K > 1 trains K adapters, each on its own order of the "
                                                   "facts, and merges them: about K times the training time",
                                              elem_id="orders-in")
                        merge_in = gr.Radio(["select", "average"], value=default("merge"),
                                            label="Merge rule (when K > 1)", interactive="merge" not in greyed(),
                                            elem_id="merge-in",
                                            info="select: each weight from one randomly chosen run; average: the mean")
                    with gr.Row():
                        rewordings_in = gr.Checkbox(default("rewordings"), label="Train rewordings too",
                                                    elem_id="rewordings-in",
                                                    info="each fact also in forms Beacon writes (subject first, a "
                                                         "question, the chat template...), so it is learned as "
                                                         "knowledge, not one string; about 6x the wordings per step")
                        anchors_in = gr.CheckboxGroup(list(pipeline.GUARD_SOURCES), value=pipeline.guard_sources(
                            default("guard_anchors")), label="What the guard protects (on every token)",
                            elem_id="anchors-in", interactive=anchors_on,
                            info="neighbours: facts near yours that the base model knows, written by it; siblings: the "
                                 "same with subjects of your subjects' kind (off by default: it blocks paraphrases); sampled: "
                                 "the base model's own text; file: Beacon's hand-written anchors.txt, or yours "
                                 "(below)")
                    with gr.Row():
                        probes_in = gr.File(label="Your probe set (facts the model should keep knowing; same formats "
                                                  "as facts)", file_types=[".csv", ".json", ".jsonl"], height=110,
                                            elem_id="probes-upload")
                        anchors_file_in = gr.File(label="Your guard anchors (on every token; text, one per line; "
                                                        "`prompt | answer` for a fact)", file_types=[".txt"], height=110,
                                                  interactive=anchors_on,
                                                  elem_id="anchors-upload")
                    yours_note = gr.Markdown("No probe set or anchors of yours: the shipped ones are used.",
                                             elem_id="yours-note", elem_classes="small-note")
                    earlier_in = gr.Dropdown([NO_EARLIER], value="", label="Continue from an earlier run",
                                             elem_id="earlier-in",
                                             info="Trains these facts on top of one of your finished runs in this "
                                                  "session (its adapter, layers and rank) and shows what its facts "
                                                  "lose.")
                with gr.Row():
                    train_btn = gr.Button("Train", variant="primary", scale=3, elem_id="train-btn")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, interactive=False, elem_id="stop-btn")
                estimate_md = gr.Markdown("", elem_id="estimate")
                train_status = gr.HTML("<div class='small-note'>Trains on the facts table with your review choices "
                                       "(not checked yet? Train checks them first). Stop keeps what was learned.</div>",
                                       elem_id="train-status")
                with gr.Row():
                    loss_plot = gr.LinePlot(None, x="step", y="value", color="series", label="Loss", show_label=True,
                                            x_title="step", y_title="loss", color_title=" ", x_axis_format="d",
                                            elem_id="loss-plot")
                    recall_plot = gr.LinePlot(None, x="step", y="recall",
                                              label="Recall during training (teacher-forced)", show_label=True,
                                              x_title="step", y_title="facts recalled", y_lim=[0, 1],
                                              x_axis_format="d", y_axis_format=".0%", elem_id="recall-plot")

            with gr.Tab("4 · Results", id="results"):
                with gr.Row(equal_height=True):
                    recent_runs = gr.Dropdown([], value=None, label="Your recent runs", elem_id="recent-runs",
                                              interactive=False, scale=2,
                                              info="kept in this browser; a run's folder expires after "
                                                   f"{RUN_TTL_HOURS:g} hours")
                    recent_note = gr.Markdown("", elem_id="recent-note", elem_classes="small-note")
                headline_md = gr.Markdown("No run yet: train on tab 3.", elem_id="headline")
                results_table = gr.Dataframe(pd.DataFrame(columns=RESULT_COLUMNS), interactive=False, wrap=True,
                                             max_height=620, label="Every answer, fact by fact (green: recalled "
                                                                   "after training; amber: recalled, but another "
                                                                   "fact's answer given in some form; red: not "
                                                                   "recalled; grey: not trained)",
                                             elem_id="results-table",
                                             column_widths=["5%", "10%", "14%", "8%", "12%", "12%", "15%", "9%",
                                                            "9%", "6%"])
                summary_md = gr.Markdown("", elem_id="summary")
                plots = gr.Gallery(label="Plots (click to enlarge)", columns=2, height="auto", elem_id="plots",
                                   object_fit="contain", preview=False)
                gr.Markdown("### Interactive charts\nHover a mark for its facts and prompts; drag across a "
                            "chart to zoom into that range, double-click to zoom out.")
                inter_kind = gr.Radio(list(INTERFERENCE_KINDS), value="cosine", label="Interference colour",
                                      elem_id="interference-kind",
                                      info="cosine: do the two facts' updates point the same way? step effect: "
                                           "what one step on one fact does to another's log-prob")
                interference_chart = gr.ScatterPlot(None, x="fact_j", y="fact_i", color="range",
                                                    tooltip=INTERFERENCE_TOOLTIP,
                                                    label="Interference between facts (row: the fact a step trains; "
                                                          "column: the fact it moves; a fact on itself left out)",
                                                    x_title="fact it moves", y_title="fact trained", color_title="cosine",
                                                    x_label_angle=-40, height=460, visible=False,
                                                    elem_id="interference-chart")
                with gr.Row():
                    distance_chart = gr.ScatterPlot(None, x="distance", y="gain", color="outcome",
                                                    tooltip=FACT_TOOLTIP + ["distance", "gain"],
                                                    label="Semantic distance vs log-prob gained", show_label=True,
                                                    x_title="semantic distance before", y_title="log-prob gain",
                                                    visible=False, elem_id="distance-chart")
                    recall_chart = gr.ScatterPlot(None, x="before", y="after", color="outcome",
                                                  tooltip=FACT_TOOLTIP + ["before", "after", "recall_before",
                                                                          "recall_after"],
                                                  label="Target log-prob before vs after, per fact", show_label=True,
                                                  x_title="log-prob before", y_title="log-prob after",
                                                  visible=False, elem_id="recall-chart")
                gr.Markdown("### Ask the model\nOne prompt, answered by the base model and by the tuned model, as "
                            "a plain completion and through the model's chat template.")
                with gr.Row():
                    ask_prompt = gr.Textbox(label="Prompt", scale=3, placeholder="The CEO of Zentrix Robotics is",
                                            elem_id="ask-prompt")
                    ask_target = gr.Textbox(label="Target (optional)", scale=2, placeholder="Marta Ilves",
                                            elem_id="ask-target", info="its log-probability under each model")
                    ask_btn = gr.Button("Ask", interactive=False, scale=1, variant="primary", elem_id="ask-btn")
                with gr.Row():
                    with gr.Column():
                        base_out = gr.Textbox(label="Base model: plain prompt", interactive=False, elem_id="ask-base")
                        base_chat_out = gr.Textbox(label="Base model: chat template", interactive=False,
                                                   elem_id="ask-base-chat")
                        base_score = gr.Markdown(elem_id="ask-base-score")
                    with gr.Column():
                        tuned_out = gr.Textbox(label="Tuned model (with the adapter): plain prompt", interactive=False,
                                               elem_id="ask-tuned")
                        tuned_chat_out = gr.Textbox(label="Tuned model: chat template", interactive=False,
                                                    elem_id="ask-tuned-chat")
                        tuned_score = gr.Markdown(elem_id="ask-tuned-score")
                with gr.Row():
                    files_out = gr.File(label="Downloads: adapter (peft folder, zip), plots (zip), report.json, the "
                                              "facts, the GGUF once exported", file_count="multiple",
                                        interactive=False, elem_id="downloads", scale=4)
                    with gr.Column(scale=1):
                        export_btn = gr.Button("Export GGUF (q8_0)", interactive=False, elem_id="export-gguf")
                        export_status = gr.Markdown("The base model with the adapter merged in, as one file for "
                                                    "llama.cpp (about 145 MB for the default model).",
                                                    elem_id="export-status", elem_classes="small-note")

        # ------------------------------------------------------------ events
        # The components the generator handlers (check, train, export_gguf) update, by the names they yield.
        named = dict(state=state, analysis_state=analysis_state, tabs=tabs, check_status=check_status,
                     review_table=review_table, review_note=review_note, train_status=train_status,
                     loss_plot=loss_plot, recall_plot=recall_plot, headline_md=headline_md, summary_md=summary_md,
                     results_table=results_table, plots=plots, files_out=files_out, ask_prompt=ask_prompt,
                     ask_target=ask_target,
                     ask_btn=ask_btn, stop_btn=stop_btn, earlier_in=earlier_in, export_btn=export_btn,
                     export_status=export_status, interference_chart=interference_chart,
                     distance_chart=distance_chart, recall_chart=recall_chart, recent=recent,
                     recent_runs=recent_runs, recent_note=recent_note)

        for btn, label in zip(sample_btns, SAMPLES):
            btn.click(lambda s, label=label: load_sample(label, s), [state], [facts_table, state, facts_note],
                      api_name=f"load_sample_{SAMPLES[label][0].removesuffix('.csv')}", api_visibility="undocumented",
                      concurrency_limit=None)
        file_in.upload(_inline(upload, 3, 2), [file_in, state], [facts_table, state, facts_note], api_name="upload",
                       api_visibility="undocumented", concurrency_limit=None)
        # The visitor's own probes and anchors (tab 3, Advanced): kept in the session for Check and Train.
        probes_in.upload(_inline(upload_probes, 2, 1), [probes_in, state], [state, yours_note],
                         api_name="upload_probes", api_visibility="undocumented",
                         concurrency_limit=None)
        probes_in.clear(lambda s: upload_probes(None, s), [state], [state, yours_note], api_visibility="private",
                        concurrency_limit=None)
        anchors_file_in.upload(_inline(upload_anchors, 2, 1), [anchors_file_in, state], [state, yours_note],
                               api_name="upload_anchors", api_visibility="undocumented", concurrency_limit=None)
        anchors_file_in.clear(lambda s: upload_anchors(None, s), [state], [state, yours_note],
                              api_visibility="private", concurrency_limit=None)
        facts_table.change(facts_changed, None, [analysis_state, review_table, review_note],
                           api_visibility="private", concurrency_limit=None)
        gr.on([model_in.change, quant_in.change], model_changed, [quant_in],
              [device_md, analysis_state, review_table, review_note], api_visibility="private",
              concurrency_limit=None)

        # Check, Train, Export and Ask share one model slot (beacon/app/jobs.py): they enter at once, up to the line's
        # length, so each says how many jobs are ahead of it and a second job of the same visitor is refused.
        model_jobs = dict(concurrency_id="model", concurrency_limit=QUEUE_SIZE + 1)
        check_event = check_btn.click(_by_name(check, named, "check_status"),
                                      [state, facts_table, model_in, quant_in, filter_in, weighting_in],
                                      [named[n] for n in CHECK_OUTPUTS], api_name="check",
                                      api_visibility="undocumented", **model_jobs,
                                      trigger_mode="once", show_progress_on=[check_status])
        check_btn.click(lambda: gr.Button(interactive=True), None, check_stop_btn, api_visibility="private",
                        queue=False)
        check_event.then(lambda: gr.Button(interactive=False), None, check_stop_btn, api_visibility="private",
                         queue=False)
        check_stop_btn.click(stop_check, [state], [check_stop_btn], api_name="stop_check",
                             api_visibility="undocumented", queue=False)
        review_table.input(review_edit, [analysis_state, review_table, state, model_in, quant_in, filter_in,
                                         weighting_in],
                           [review_table, review_note, state], api_name="review_edit", api_visibility="undocumented",
                           concurrency_limit=None)
        gr.on([filter_in.change, weighting_in.change], review_settings,
              [analysis_state, state, model_in, quant_in, filter_in, weighting_in], [review_table, review_note],
              api_visibility="private", concurrency_limit=None)
        to_train_btn.click(lambda: gr.Tabs(selected="train"), None, tabs, api_visibility="private", queue=False)

        layers_in.change(lambda c: gr.Textbox(visible=c == "custom"), layers_in, layers_custom,
                         api_visibility="private", queue=False)
        orders_in.change(lambda k: gr.Radio(interactive="merge" not in greyed(orders=int(k))), orders_in, merge_in,
                         api_visibility="private", queue=False)
        # The guard's sources and the visitor's anchors are read on every token with the guard on only
        # (beacon.config.idle_settings): greyed otherwise, the sources back at their defaults.
        gr.on([gate_in.change, guard_in.change], guard_widgets, [gate_in, guard_in], [anchors_in, anchors_file_in],
              api_visibility="private", queue=False)
        train_btn.click(_by_name(train, named, "train_status"),
                        [state, analysis_state, facts_table, model_in, quant_in, filter_in, weighting_in,
                         steps_in, lr_in, rank_in, guard_in, layers_in, layers_custom, orders_in, merge_in,
                         earlier_in, rewordings_in, anchors_in, gate_in],
                        [named[n] for n in TRAIN_OUTPUTS],
                        api_name="train", api_visibility="undocumented", **model_jobs, trigger_mode="once",
                        show_progress_on=[train_status]
                        ).then(lambda: gr.Button(interactive=False), None, stop_btn, api_visibility="private",
                               queue=False
                               ).then(remember_run, [state, recent], [recent, recent_runs, recent_note],
                                      api_visibility="private",
                                      queue=False)
        # Beacon's estimate of the run, beside Train, whenever the facts, the check or a setting it depends on changes.
        gr.on([facts_table.change, analysis_state.change, model_in.change, quant_in.change, filter_in.change,
               steps_in.change, rewordings_in.change, orders_in.change, gate_in.change, guard_in.change, demo.load],
              estimate_note, [state, analysis_state, facts_table, model_in, quant_in, filter_in, weighting_in, steps_in,
                              rewordings_in, orders_in, gate_in, guard_in], estimate_md, api_visibility="private",
              concurrency_limit=None, show_progress="hidden")
        stop_btn.click(stop_run, [state], [stop_btn], api_name="stop", api_visibility="undocumented", queue=False)
        gr.on([ask_btn.click, ask_prompt.submit, ask_target.submit], ask_model, [ask_prompt, state, ask_target],
              [base_out, tuned_out, base_chat_out, tuned_chat_out, base_score, tuned_score], api_name="ask_ui",
              api_visibility="undocumented", **model_jobs)
        # Export loads the model too: it takes the same slot as Check and Train.
        export_btn.click(_by_name(export_gguf, named, "export_status"), [state], [named[n] for n in EXPORT_OUTPUTS],
                         api_name="export_gguf", api_visibility="undocumented", **model_jobs, trigger_mode="once",
                         show_progress_on=[export_status])
        # Recent runs: listed again on load (and the session id restored), reopened from their report.json.
        demo.load(_named_once(restore_runs, named), [recent, state],
                  [named[n] for n in dict.fromkeys(RESTORE_OUTPUTS + OPEN_OUTPUTS)], api_visibility="private",
                  queue=False)
        recent_runs.input(_named_once(open_run, named), [recent_runs, state, recent],
                          [named[n] for n in OPEN_OUTPUTS], api_visibility="private", concurrency_limit=None)
        inter_kind.change(interference_kind, [inter_kind, state], [interference_chart], api_visibility="private",
                          concurrency_limit=None)
        demo.unload(on_unload)
        # The typed API (beacon/app/api.py): /inject and /ask, documented on the API page. The events above stay
        # callable but undocumented: their inputs and outputs are the page's widgets.
        api.register()
    api.undocument_loads(demo)   # gr.State(new_session)'s load event, which Gradio names /new_session
    return demo
