package dev.mdexport.demo

import android.app.Activity
import android.graphics.Bitmap
import android.os.Bundle
import android.text.InputType
import android.view.Gravity
import android.view.ViewGroup.LayoutParams.MATCH_PARENT
import android.view.ViewGroup.LayoutParams.WRAP_CONTENT
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ProgressBar
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import dev.mdexport.core.BundleException
import dev.mdexport.core.CancelledException
import dev.mdexport.core.GenerationRequest
import dev.mdexport.core.Images
import dev.mdexport.core.Schedulers
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean

/**
 * One screen, plain Views built in code: bundle status, prompt, negative prompt, steps, seed,
 * guidance scale, scheduler, GPU switch, Generate/Cancel, per-step progress, the image and timings.
 * All model work runs on one background thread.
 */
class MainActivity : Activity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private val cancel = AtomicBoolean(false)
    @Volatile private var engine: Engine? = null
    @Volatile private var busy = false

    private lateinit var status: TextView
    private lateinit var prompt: EditText
    private lateinit var negative: EditText
    private lateinit var steps: EditText
    private lateinit var seed: EditText
    private lateinit var guidance: EditText
    private lateinit var scheduler: Spinner
    private lateinit var gpu: CheckBox
    private lateinit var generate: Button
    private lateinit var progress: ProgressBar
    private lateinit var progressText: TextView
    private lateinit var image: ImageView
    private lateinit var timing: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        buildUi()
        loadEngine(useGpu = gpu.isChecked)
    }

    override fun onDestroy() {
        cancel.set(true)
        worker.execute { engine?.close(); engine = null }
        worker.shutdown()
        super.onDestroy()
    }

    private fun dp(v: Int) = (v * resources.displayMetrics.density).toInt()

    private fun buildUi() {
        val col = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(dp(16), dp(16), dp(16), dp(16))
        }
        fun label(text: String) = TextView(this).apply { this.text = text; setPadding(0, dp(8), 0, 0) }
        fun numberField(signed: Boolean = false, decimal: Boolean = false) = EditText(this).apply {
            inputType = InputType.TYPE_CLASS_NUMBER or
                (if (signed) InputType.TYPE_NUMBER_FLAG_SIGNED else 0) or
                (if (decimal) InputType.TYPE_NUMBER_FLAG_DECIMAL else 0)
            layoutParams = LinearLayout.LayoutParams(0, WRAP_CONTENT, 1f)
        }

        status = TextView(this).apply { text = "Loading model…"; setTextIsSelectable(true) }
        col.addView(status)

        col.addView(label("Prompt"))
        prompt = EditText(this).apply {
            setText("a red circle on a blue background")  // in the vocabulary of md-export's default model
            inputType = InputType.TYPE_CLASS_TEXT or InputType.TYPE_TEXT_FLAG_MULTI_LINE
        }
        col.addView(prompt)
        col.addView(label("Negative prompt (row 0 of classifier-free guidance)"))
        negative = EditText(this).apply { inputType = InputType.TYPE_CLASS_TEXT }
        col.addView(negative)

        val row = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL }
        val rowLabels = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL }
        for (name in listOf("Steps", "Seed", "Guidance")) {
            rowLabels.addView(TextView(this).apply {
                text = name
                layoutParams = LinearLayout.LayoutParams(0, WRAP_CONTENT, 1f)
            })
        }
        steps = numberField()
        seed = numberField(signed = true).apply { setText("42") }
        guidance = numberField(decimal = true)
        row.addView(steps); row.addView(seed); row.addView(guidance)
        col.addView(rowLabels)
        col.addView(row)

        val row2 = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL; gravity = Gravity.CENTER_VERTICAL }
        scheduler = Spinner(this).apply {
            adapter = ArrayAdapter(this@MainActivity, android.R.layout.simple_spinner_dropdown_item, Schedulers.supported)
            layoutParams = LinearLayout.LayoutParams(0, WRAP_CONTENT, 1f)
        }
        gpu = CheckBox(this).apply { text = "GPU (falls back to CPU)"; isChecked = true }
        row2.addView(scheduler); row2.addView(gpu)
        col.addView(row2)

        generate = Button(this).apply {
            text = "Generate"
            isEnabled = false
            setOnClickListener { if (busy) cancel.set(true) else startGeneration() }
        }
        col.addView(generate)
        progress = ProgressBar(this, null, android.R.attr.progressBarStyleHorizontal).apply { max = 1; progress = 0 }
        col.addView(progress)
        progressText = TextView(this)
        col.addView(progressText)
        image = ImageView(this).apply {
            adjustViewBounds = true
            scaleType = ImageView.ScaleType.FIT_CENTER
            layoutParams = LinearLayout.LayoutParams(MATCH_PARENT, WRAP_CONTENT)
        }
        col.addView(image)
        timing = TextView(this).apply { setTextIsSelectable(true) }
        col.addView(timing)

        setContentView(ScrollView(this).apply { addView(col, MATCH_PARENT, WRAP_CONTENT) })
    }

    private fun loadEngine(useGpu: Boolean, then: (() -> Unit)? = null) {
        busy = true
        generate.isEnabled = false
        status.text = "Loading model…"
        worker.execute {
            engine?.close()
            engine = null
            var ok = false
            val message = try {
                val e = Engine.load(this, useGpu)
                engine = e
                ok = true
                describe(e)
            } catch (e: BundleException) {
                "Cannot use the model bundle:\n${e.message}\n\n${whereToPut()}"
            } catch (e: Throwable) {
                "Cannot load the model bundle: ${e.javaClass.simpleName}: ${e.message}\n\n${whereToPut()}"
            }
            runOnUiThread {
                busy = false
                status.text = message
                generate.isEnabled = ok
                val e = engine
                if (ok && e != null) {
                    val p = e.bundle.manifest.pipeline
                    if (steps.text.isEmpty()) steps.setText(p.defaultSteps.toString())
                    if (guidance.text.isEmpty()) guidance.setText(p.defaultGuidanceScale.toString())
                    scheduler.setSelection(Schedulers.supported.indexOf(e.denoiser.defaultScheduler).coerceAtLeast(0))
                    then?.invoke()
                }
            }
        }
    }

    private fun whereToPut(): String {
        val ext = BundleLocator.externalDir(this)?.path ?: "(no external files dir)"
        return "Put md-export's out/tflite/ in app/src/main/assets/model/ and rebuild, or push it:\n" +
            "adb push out/tflite/. $ext/"
    }

    private fun describe(e: Engine): String {
        val m = e.bundle.manifest
        val p = m.pipeline
        val where = when (val l = e.location) {
            is BundleLocation.Directory -> l.dir.path
            is BundleLocation.Assets -> "assets/${l.folder}"
        }
        return buildString {
            append("Model: $where (md-export ${m.mdExportVersion ?: "?"}, parity ${m.parityStatus ?: "not-run"})\n")
            append("${p.imageWidth}x${p.imageHeight}, guidance ${p.guidance.wire}, ${m.unet.precision ?: "?"} UNet\n")
            append("Runs on: ${e.backends}; loaded in ${e.loadMs} ms")
            e.denoiser.schedulerNote?.let { append("\nNote: $it") }
        }
    }

    private fun startGeneration() {
        val e = engine ?: return
        if (gpu.isChecked != e.useGpu) {
            loadEngine(gpu.isChecked) { startGeneration() }
            return
        }
        val request = try {
            GenerationRequest(
                prompt = prompt.text.toString(),
                negativePrompt = negative.text.toString(),
                steps = steps.text.toString().toInt().also { require(it in 1..1000) { "steps must be 1..1000" } },
                guidanceScale = guidance.text.toString().toDouble(),
                seed = seed.text.toString().toLong(),
                scheduler = scheduler.selectedItem as String,
            )
        } catch (ex: Exception) {
            progressText.text = "Check steps, seed and guidance: ${ex.message}"
            return
        }
        busy = true
        cancel.set(false)
        generate.text = "Cancel"
        progress.max = request.steps ?: 1
        progress.progress = 0
        progressText.text = "Encoding prompt…"
        val t0 = System.nanoTime()
        worker.execute {
            try {
                val stepStart = LongArray(1) { System.nanoTime() }
                val result = e.denoiser.generate(request, { done, total ->
                    val now = System.nanoTime()
                    val ms = (now - stepStart[0]) / 1_000_000
                    stepStart[0] = now
                    runOnUiThread {
                        progress.max = total
                        progress.progress = done
                        progressText.text = if (done < total) "Step $done / $total (${ms} ms)" else "Decoding…"
                    }
                }, { cancel.get() })
                val argb = Images.toArgb(result.image)
                val bmp = Bitmap.createBitmap(argb.pixels, argb.width, argb.height, Bitmap.Config.ARGB_8888)
                val wall = (System.nanoTime() - t0) / 1_000_000
                val t = result.timings
                runOnUiThread {
                    image.setImageBitmap(bmp)
                    progressText.text = "Done: ${result.steps} steps, ${result.scheduler}"
                    timing.text = "Total ${"%.2f".format(wall / 1000.0)} s — text encoder ${t.textEncoderMs} ms, " +
                        "UNet ${t.unetMs} ms (${t.unetMs / maxOf(1, result.steps)} ms/step), decoder ${t.decoderMs} ms\n" +
                        "Seed ${request.seed} (the app's own RNG: same seed, different image than diffusers)"
                }
            } catch (ex: CancelledException) {
                runOnUiThread { progressText.text = "Cancelled" }
            } catch (ex: BundleException) {
                runOnUiThread { progressText.text = "Model error: ${ex.message}" }
            } catch (ex: Throwable) {
                runOnUiThread { progressText.text = "Failed: ${ex.javaClass.simpleName}: ${ex.message}" }
            } finally {
                runOnUiThread {
                    busy = false
                    generate.text = "Generate"
                    generate.isEnabled = engine != null
                }
            }
        }
    }
}
