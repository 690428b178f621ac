package dev.mdexport.core

import dev.mdexport.core.TestSupport.assertAllClose
import org.junit.Assert.assertEquals
import org.junit.Test

/**
 * Whole runs of [Denoiser] against the same runs of md_export.pipeline.loop.generate (which
 * matches diffusers' pipelines), both over the tiny deterministic fake models of
 * core/tools/make_goldens.py (`fake_models`), re-implemented here in float32: same seed, prompt,
 * steps, guidance and scheduler.json give the same decoder input and image within 1e-4. Covers
 * torch's noise (initial latents, and LCM's step noise from the same generator), the scheduler
 * config rewrite (DDIM from an old Euler config), Euler, DDIM, DPM-Solver++ 2M, LCM, the three
 * guidance modes and decoder scaling.
 */
class PipelineTest {
    private val hidden = 8

    private fun manifest(p: JsonObject): Manifest {
        val b = p.int("unet_batch")
        val c = p.int("latent_channels"); val h = p.int("latent_height"); val w = p.int("latent_width")
        fun t(name: String, shape: List<Int>, dtype: String = "float32") = """{"name": "$name", "shape": $shape, "dtype": "$dtype"}"""
        val cond = if (p.has("timestep_cond_dim")) ", " + t("timestep_cond", listOf(b, p.int("timestep_cond_dim"))) else ""
        return Manifest.parse(
            """
            {"schema_version": 1, "target": "tflite",
             "pipeline": {"image_height": ${p.int("image_height")}, "image_width": ${p.int("image_width")},
               "latent_channels": $c, "latent_height": $h, "latent_width": $w,
               "vae_scaling_factor": ${p.double("vae_scaling_factor")}, "vae_shift_factor": ${p.double("vae_shift_factor")},
               "decoder_applies_scaling": ${p.bool("decoder_applies_scaling")},
               "guidance": "${p.string("guidance")}", "unet_batch": $b, "default_guidance_scale": ${p.double("default_guidance_scale")},
               "default_steps": ${p.int("default_steps")}, "scheduler": "${p.string("scheduler")}",
               "text_max_length": 77, "text_hidden_size": $hidden,
               "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                             "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}},
             "models": {
               "text_encoder": {"file": "text_encoder.tflite", "format": "tflite",
                 "inputs": [${t("input_ids", listOf(1, 77), "int32")}], "outputs": [${t("last_hidden_state", listOf(1, 77, hidden))}]},
               "unet": {"file": "unet.tflite", "format": "tflite",
                 "inputs": [${t("sample", listOf(b, c, h, w))}, ${t("timestep", listOf(b))}, ${t("encoder_hidden_states", listOf(b, 77, hidden))}$cond],
                 "outputs": [${t("noise_pred", listOf(b, c, h, w))}]},
               "vae_decoder": {"file": "vae_decoder.tflite", "format": "tflite",
                 "inputs": [${t("latent", listOf(1, c, h, w))}], "outputs": [${t("image", listOf(1, 3, 2 * h, 2 * w))}]}}}
            """.trimIndent()
        )
    }

    // --- make_goldens.py fake_models, in float32 ---------------------------------------------

    private val textEncoder = Model { inputs ->
        val ids = (inputs["input_ids"] as IntTensor).data
        val out = FloatArray(77 * hidden) { i ->
            kotlin.math.sin((ids[i / hidden].toFloat() * 0.001f + (i % hidden).toFloat() * 0.1f).toDouble()).toFloat()
        }
        mapOf("last_hidden_state" to FloatTensor(intArrayOf(1, 77, hidden), out))
    }

    private inner class Unet : Model {
        val timesteps = ArrayList<Float>()
        override fun run(inputs: Map<String, Tensor>): Map<String, FloatTensor> {
            val x = inputs["sample"] as FloatTensor
            val t = (inputs["timestep"] as FloatTensor).data
            val ehs = inputs["encoder_hidden_states"] as FloatTensor
            val cond = inputs["timestep_cond"] as FloatTensor?
            val batch = x.shape[0]
            val per = x.size / batch
            val perH = ehs.size / batch
            timesteps += t[0]
            val out = FloatArray(x.size)
            for (b in 0 until batch) {
                var sum = 0.0
                for (j in 0 until perH) sum += ehs.data[b * perH + j]
                val m = (sum / perH).toFloat()
                var bias = m * 0.5f + t[b] * 0.0002f
                var condTerm = 0f
                if (cond != null) {
                    val dim = cond.shape[1]
                    var s = 0.0
                    for (j in 0 until 4) s += cond.data[b * dim + j]
                    condTerm = 0.05f * s.toFloat()
                }
                for (j in 0 until per) {
                    var v = 0.4f * x.data[b * per + j] + bias
                    if (cond != null) v += condTerm
                    out[b * per + j] = v
                }
            }
            return mapOf("noise_pred" to FloatTensor(x.shape, out))
        }
    }

    private inner class Decoder : Model {
        var latent: FloatArray? = null
        override fun run(inputs: Map<String, Tensor>): Map<String, FloatTensor> {
            val l = inputs["latent"] as FloatTensor
            latent = l.data.copyOf()
            val h = l.shape[2]; val w = l.shape[3]
            val hw = h * w
            val img = FloatArray(3 * 4 * hw)
            for (c in 0 until 3) for (y in 0 until 2 * h) for (x in 0 until 2 * w) {
                val src = (y / 2) * w + x / 2
                val v = l.data[c * hw + src] * 0.5f + l.data[3 * hw + src] * 0.25f
                img[(c * 2 * h + y) * 2 * w + x] = Math.tanh(v.toDouble()).toFloat()
            }
            return mapOf("image" to FloatTensor(intArrayOf(1, 3, 2 * h, 2 * w), img))
        }
    }

    @Test fun kotlinRunsMatchPythonGenerate() {
        val cases = TestSupport.golden("pipeline").objects("cases")
        assertEquals(listOf("euler_cfg", "ddim_cfg_rewritten", "dpmpp2m_none", "lcm_embedded"), cases.map { it.string("name") })
        for (c in cases) {
            val name = c.string("name")
            val m = manifest(c.obj("pipeline"))
            val unet = Unet()
            val decoder = Decoder()
            val d = Denoiser(m, TestSupport.realTokenizer, SchedulerConfig(c.obj("scheduler_config")), textEncoder, unet, decoder)
            assertEquals(null, d.schedulerNote)
            val r = d.generate(GenerationRequest(
                c.string("prompt"), c.string("negative_prompt"), c.int("steps"), c.double("guidance_scale"), c.long("seed"),
            ))
            assertEquals(m.pipeline.scheduler, r.scheduler)
            assertAllClose("$name timesteps", c.doubleList("timesteps"), DoubleArray(unet.timesteps.size) { unet.timesteps[it].toDouble() })
            if (c.has("timestep_cond")) {
                val e = guidanceScaleEmbedding(c.double("guidance_scale"), 32)
                assertAllClose("$name timestep_cond", c.doubleList("timestep_cond"), DoubleArray(e.size) { e[it].toDouble() }, 1e-6)
            }
            val fed = decoder.latent!!
            assertAllClose("$name decoder input", c.doubleList("decoder_input"), DoubleArray(fed.size) { fed[it].toDouble() }, 1e-4)
            assertAllClose("$name image", c.doubleList("image"), DoubleArray(r.image.size) { r.image.data[it].toDouble() }, 1e-4)
        }
    }

    @Test fun withoutTheRewriteDdimDiffers() {
        // the same DDIM run with the config taken as it is (no steps_offset / clip_sample fix-up) must not match
        val c = TestSupport.golden("pipeline").objects("cases").first { it.string("name") == "ddim_cfg_rewritten" }
        val raw = SchedulerConfig(c.obj("scheduler_config"))
        val s = Schedulers.create("ddim", raw, c.int("steps"))
        val expected = c.doubleList("timesteps")
        assertEquals(expected[0] - 1, s.timesteps[0], 0.0)
    }
}
