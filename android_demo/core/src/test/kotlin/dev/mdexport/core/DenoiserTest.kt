package dev.mdexport.core

import dev.mdexport.core.TestSupport.assertThrows
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test

class DenoiserTest {
    private val hidden = 8
    private val latent = intArrayOf(1, 4, 2, 3)
    private val n = 4 * 2 * 3

    private fun manifest(guidance: String, decoderAppliesScaling: Boolean = true, scheduler: String = "euler", condDim: Int = 6): Manifest {
        val b = if (guidance == "cfg-batch2") 2 else 1
        fun t(name: String, shape: List<Int>, dtype: String = "float32") = """{"name": "$name", "shape": $shape, "dtype": "$dtype"}"""
        val cond = if (guidance == "embedded") ", " + t("timestep_cond", listOf(b, condDim)) else ""
        return Manifest.parse(
            """
            {"schema_version": 1, "target": "tflite",
             "pipeline": {"image_height": 16, "image_width": 24, "latent_channels": 4, "latent_height": 2, "latent_width": 3,
               "vae_scaling_factor": 0.18215, "vae_shift_factor": 0.1, "decoder_applies_scaling": $decoderAppliesScaling,
               "guidance": "$guidance", "unet_batch": $b, "default_guidance_scale": 7.5, "default_steps": 5,
               "scheduler": "$scheduler", "text_max_length": 77, "text_hidden_size": $hidden,
               "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                             "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}},
             "models": {
               "text_encoder": {"file": "text_encoder.tflite", "format": "tflite",
                 "inputs": [${t("input_ids", listOf(1, 77), "int32")}], "outputs": [${t("last_hidden_state", listOf(1, 77, hidden))}]},
               "unet": {"file": "unet.tflite", "format": "tflite",
                 "inputs": [${t("sample", listOf(b, 4, 2, 3))}, ${t("timestep", listOf(b))}, ${t("encoder_hidden_states", listOf(b, 77, hidden))}$cond],
                 "outputs": [${t("noise_pred", listOf(b, 4, 2, 3))}]},
               "vae_decoder": {"file": "vae_decoder.tflite", "format": "tflite",
                 "inputs": [${t("latent", listOf(1, 4, 2, 3))}], "outputs": [${t("image", listOf(1, 3, 16, 24))}]}}}
            """.trimIndent()
        )
    }

    private val schedulerConfig = SchedulerConfig.parse(
        """{"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
           "beta_schedule": "scaled_linear", "steps_offset": 1, "timestep_spacing": "leading"}"""
    )

    /** Hidden state encodes the token ids so the test can tell which prompt is in which row. */
    private inner class FakeTextEncoder : Model {
        val calls = ArrayList<IntArray>()
        override fun run(inputs: Map<String, Tensor>): Map<String, FloatTensor> {
            val ids = (inputs["input_ids"] as IntTensor)
            assertArrayEquals(intArrayOf(1, 77), ids.shape)
            calls += ids.data.copyOf()
            val out = FloatArray(77 * hidden) { i -> ids.data[i / hidden] / 1000f + (i % hidden) }
            return mapOf("last_hidden_state" to FloatTensor(intArrayOf(1, 77, hidden), out))
        }
    }

    /** noise_pred row r = (r + 1) * 0.1 * sample + 0.01 * r * t: the rows differ, so a wrong combination shows. */
    private inner class FakeUnet(val batch: Int) : Model {
        val calls = ArrayList<Map<String, Tensor>>()
        override fun run(inputs: Map<String, Tensor>): Map<String, FloatTensor> {
            calls += inputs
            val sample = inputs["sample"] as FloatTensor
            val t = (inputs["timestep"] as FloatTensor).data
            val out = FloatArray(sample.size) { i -> val r = i / n; (r + 1) * 0.1f * sample.data[i] + 0.01f * r * t[r] }
            return mapOf("noise_pred" to FloatTensor(sample.shape, out))
        }
    }

    private inner class FakeDecoder : Model {
        val calls = ArrayList<FloatTensor>()
        override fun run(inputs: Map<String, Tensor>): Map<String, FloatTensor> {
            calls += inputs["latent"] as FloatTensor
            return mapOf("image" to FloatTensor(intArrayOf(1, 3, 16, 24), FloatArray(3 * 16 * 24) { 0.5f }))
        }
    }

    /** The expected final latents, computed independently of Denoiser. */
    private fun referenceLatents(steps: Int, seed: Long, combine: (u: Float, c: Float, sample: Float, t: Float) -> Float): FloatArray {
        val s = Schedulers.create("euler", schedulerConfig, steps)
        val rng = TorchGenerator(seed)
        var x = rng.randn(n).map { it * s.initNoiseSigma.toFloat() }.toFloatArray()
        for (i in 0 until steps) {
            val scaled = s.scaleModelInput(x, i)
            val t = s.timesteps[i].toFloat()
            val eps = FloatArray(n) { combine(0.1f * scaled[it], 0.2f * scaled[it] + 0.01f * t, scaled[it], t) }
            x = s.step(eps, i, x, rng)
        }
        return x
    }

    @Test fun cfgBatch2LayoutCombinationAndCalls() {
        val te = FakeTextEncoder()
        val unet = FakeUnet(2)
        val dec = FakeDecoder()
        val tok = TestSupport.realTokenizer
        val d = Denoiser(manifest("cfg-batch2"), tok, schedulerConfig, te, unet, dec)
        val progress = ArrayList<Pair<Int, Int>>()
        val r = d.generate(GenerationRequest("a red fox", steps = 4, guidanceScale = 3.0, seed = 11), { a, b -> progress += a to b })

        // text encoder: negative prompt "" and the prompt, once each
        assertEquals(2, te.calls.size)
        val idsByRow = listOf(tok.encode(""), tok.encode("a red fox"))
        assertTrue(te.calls.any { it.contentEquals(idsByRow[0]) })
        assertTrue(te.calls.any { it.contentEquals(idsByRow[1]) })

        // unet: once per step, batch 2, identical rows, unconditional hidden state in row 0
        assertEquals(4, unet.calls.size)
        val euler = Schedulers.create("euler", schedulerConfig, 4)
        unet.calls.forEachIndexed { i, inputs ->
            val sample = inputs["sample"] as FloatTensor
            assertArrayEquals(intArrayOf(2, 4, 2, 3), sample.shape)
            assertArrayEquals(sample.data.copyOfRange(0, n), sample.data.copyOfRange(n, 2 * n), 0f)
            val ts = inputs["timestep"] as FloatTensor
            assertArrayEquals(intArrayOf(2), ts.shape)
            assertArrayEquals(floatArrayOf(euler.timesteps[i].toFloat(), euler.timesteps[i].toFloat()), ts.data, 0f)
            val ehs = inputs["encoder_hidden_states"] as FloatTensor
            assertArrayEquals(intArrayOf(2, 77, hidden), ehs.shape)
            // token at position 1: "" -> eos 49407 in row 0, "a" -> 320 in row 1
            assertEquals(49407 / 1000f, ehs.data[1 * hidden], 1e-6f)
            assertEquals(320 / 1000f, ehs.data[77 * hidden + 1 * hidden], 1e-6f)
            assertNull(inputs["timestep_cond"])
        }
        assertEquals(listOf(1 to 4, 2 to 4, 3 to 4, 4 to 4), progress)

        // guidance: u + 3 * (c - u), then Euler
        val expected = referenceLatents(4, 11) { u, c, _, _ -> u + 3f * (c - u) }
        assertArrayEquals(expected, r.latents.data, 1e-5f)
        // the swapped combination must not match (the test can fail)
        val swapped = referenceLatents(4, 11) { u, c, _, _ -> c + 3f * (u - c) }
        assertFalse(swapped.indices.all { Math.abs(swapped[it] - r.latents.data[it]) < 1e-3f })

        // decoder applies scaling itself: fed the latents unchanged
        assertEquals(1, dec.calls.size)
        assertArrayEquals(latent, dec.calls[0].shape)
        assertArrayEquals(r.latents.data, dec.calls[0].data, 0f)
        assertArrayEquals(intArrayOf(1, 3, 16, 24), r.image.shape)
        assertEquals("euler", r.scheduler)
    }

    @Test fun decoderScalingWhenDecoderDoesNotApplyIt() {
        val dec = FakeDecoder()
        val d = Denoiser(manifest("cfg-batch2", decoderAppliesScaling = false), TestSupport.realTokenizer, schedulerConfig,
            FakeTextEncoder(), FakeUnet(2), dec)
        val r = d.generate(GenerationRequest("x", steps = 2, seed = 5))
        val fed = dec.calls.single().data
        for (i in 0 until n) assertEquals(r.latents.data[i] / 0.18215f + 0.1f, fed[i], 1e-4f)
    }

    @Test fun guidanceNoneUsesBatchOneAndNoNegativePrompt() {
        val te = FakeTextEncoder()
        val unet = FakeUnet(1)
        val d = Denoiser(manifest("none"), TestSupport.realTokenizer, schedulerConfig, te, unet, FakeDecoder())
        val r = d.generate(GenerationRequest("a red fox", steps = 3, guidanceScale = 9.0, seed = 2))
        assertEquals(1, te.calls.size)
        assertEquals(3, unet.calls.size)
        assertArrayEquals(intArrayOf(1, 4, 2, 3), unet.calls[0]["sample"]!!.shape)
        assertArrayEquals(intArrayOf(1, 77, hidden), unet.calls[0]["encoder_hidden_states"]!!.shape)
        // row 0 of the fake is used as is (scale ignored)
        val expected = referenceLatents(3, 2) { u, _, _, _ -> u }
        assertArrayEquals(expected, r.latents.data, 1e-5f)
    }

    @Test fun embeddedGuidanceFeedsTimestepCond() {
        val unet = FakeUnet(1)
        val d = Denoiser(manifest("embedded", scheduler = "lcm"), TestSupport.realTokenizer, schedulerConfig,
            FakeTextEncoder(), unet, FakeDecoder())
        val r = d.generate(GenerationRequest("x", steps = 4, guidanceScale = 8.0))
        assertEquals("lcm", r.scheduler)
        assertEquals(4, unet.calls.size)
        val cond = unet.calls[0]["timestep_cond"] as FloatTensor
        assertArrayEquals(intArrayOf(1, 6), cond.shape)
        assertArrayEquals(guidanceScaleEmbedding(8.0, 6), cond.data, 0f)
        assertEquals(999f, (unet.calls[0]["timestep"] as FloatTensor).data[0], 0f)
    }

    @Test fun unknownManifestSchedulerFallsBackToEuler() {
        val d = Denoiser(manifest("cfg-batch2", scheduler = "unipc"), TestSupport.realTokenizer, schedulerConfig,
            FakeTextEncoder(), FakeUnet(2), FakeDecoder())
        assertEquals("euler", d.defaultScheduler)
        assertTrue(d.schedulerNote!!.contains("unipc"))
        assertEquals(5, d.generate(GenerationRequest("x")).steps) // default_steps from the manifest
    }

    @Test fun cancellationStopsBeforeTheNextStep() {
        val unet = FakeUnet(2)
        val d = Denoiser(manifest("cfg-batch2"), TestSupport.realTokenizer, schedulerConfig, FakeTextEncoder(), unet, FakeDecoder())
        var done = 0
        assertThrows<CancelledException> {
            d.generate(GenerationRequest("x", steps = 10), { s, _ -> done = s }, { done >= 2 })
        }
        assertEquals(2, unet.calls.size)
    }

    @Test fun wrongModelOutputNamesTheFile() {
        val badUnet = Model { mapOf("out" to FloatTensor(2, 4, 2, 3)) }
        val d = Denoiser(manifest("cfg-batch2"), TestSupport.realTokenizer, schedulerConfig, FakeTextEncoder(), badUnet, FakeDecoder())
        val e = assertThrows<BundleException> { d.generate(GenerationRequest("x", steps = 1)) }
        assertEquals("unet.tflite: no output named \"noise_pred\" (got: out)", e.message)
    }
}
